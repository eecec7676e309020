"""4 processes on a dp 2 x ep 2 mesh: with FSDP (experts sharded over their 2 replicas, the rest over all 4 ranks)
up to step 4, then resumed without FSDP (expert gradients all-reduced over the replicas) up to step 8: both layouts
follow the one-process run, and a checkpoint of one resumes into the other. About a minute on 2 cores."""

from __future__ import annotations

from tests.llm.train.conftest import assert_follows, memory_per_rank, param_mib, run_args, torchrun


def test_dp2_x_ep2_with_and_without_fsdp_follows_one_process(corpus, full_run, tmp_path):
    total, experts = param_mib(full_run)
    args = [*run_args(corpus, full_run, tmp_path), "--expert-parallel", "2"]
    layout, mib = memory_per_rank(torchrun(4, [*args, "--max-steps", "4", "--fsdp"]).stderr)
    assert layout == "4 processes, dp 2 x ep 2, FSDP" and abs(mib - total / 4) < 0.01, mib  # everything / 4
    layout, mib = memory_per_rank(torchrun(4, [*args, "--resume"]).stderr)
    assert layout == "4 processes, dp 2 x ep 2" and abs(mib - (total - experts / 2)) < 0.006, mib  # experts / 2
    assert_follows(full_run, tmp_path)
