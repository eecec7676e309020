"""FSDP2 on 2 processes (gloo): parameters, gradients and AdamW state sharded per block, the same training as one
process with the same global batch, a sharded checkpoint and the same export."""

from __future__ import annotations

import torch

from tests.llm.train.conftest import assert_follows, memory_per_rank, param_mib, run_args, torchrun


def test_two_fsdp_processes_follow_one_process(corpus, full_run, tmp_path):
    from safetensors.torch import load_file

    proc = torchrun(2, [*run_args(corpus, full_run, tmp_path), "--fsdp"])
    assert_follows(full_run, tmp_path)
    layout, mib = memory_per_rank(proc.stderr)
    assert layout == "2 processes, FSDP" and abs(mib - param_mib(full_run)[0] / 2) < 0.01, mib  # every tensor halved
    assert not (tmp_path / "checkpoint.pt").exists()
    assert [d.name for d in (tmp_path / "checkpoint").iterdir()] == ["step-00000008"]
    want, got = load_file(full_run / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert sorted(got) == sorted(want)
    for name, t in want.items():
        torch.testing.assert_close(got[name], t, atol=1e-5, rtol=0, msg=name)
