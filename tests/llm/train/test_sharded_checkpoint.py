"""Sharded checkpoints (torch.distributed.checkpoint): each tensor recorded by name and global shape with each
rank's piece, committed atomically, and resumable into another layout with the losses of an uninterrupted run."""

from __future__ import annotations

import pytest
import torch

from llm.train import parse_config, train
from llm.train.checkpointing import find_checkpoint
from llm.train.sharded_checkpoint import STATE_FILE, latest_sharded, step_dir
from tests.llm.train.conftest import assert_follows, losses, run_args, torchrun


def test_an_expert_parallel_checkpoint_holds_each_rank_s_experts_as_pieces_of_the_whole(ep_run):
    import torch.distributed.checkpoint as dcp

    out, _ = ep_run
    assert not (out / "checkpoint.pt").exists()
    d = latest_sharded(out)
    assert d == step_dir(out, 8) and sorted(p.name for p in d.iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        STATE_FILE,
    ]
    meta = dcp.FileSystemReader(d).read_metadata().state_dict_metadata
    w1 = meta["model.model.layers.0.block_sparse_moe.experts.w1"]
    assert tuple(w1.size) == (4, 64, 64)  # the global shape: 4 experts, two per rank
    assert sorted(tuple(c.offsets) for c in w1.chunks) == [(0, 0, 0), (2, 0, 0)]
    adam = meta["optim.model.layers.0.block_sparse_moe.experts.w1.exp_avg"]
    assert tuple(adam.size) == (4, 64, 64) and len(adam.chunks) == 2
    assert len(meta["model.model.embed_tokens.weight"].chunks) == 1  # replicated: saved once


def test_resume_across_layouts_equals_the_uninterrupted_run(corpus, full_run, tmp_path):
    """ep2 -> one process -> ep2: steps 1-4 on 2 expert-parallel processes, 5-6 on one, 7-8 on 2 again."""
    args = run_args(corpus, full_run, tmp_path)
    torchrun(2, [*args, "--max-steps", "4", "--expert-parallel", "2"])
    assert find_checkpoint(tmp_path) == step_dir(tmp_path, 4)
    train(parse_config([*args, "--max-steps", "6", "--resume"]))  # reads the shards, writes checkpoint.pt
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint.pt" and not (tmp_path / "checkpoint").exists()
    # A kill during a later save leaves an incomplete step directory: resume ignores it, the next save removes it.
    (step_dir(tmp_path, 7)).mkdir(parents=True)
    (step_dir(tmp_path, 7) / "__0_0.distcp").write_bytes(b"torn")
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint.pt"
    torchrun(2, [*args, "--resume", "--expert-parallel", "2"])  # reads checkpoint.pt, slices the experts
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["step-00000008"]
    assert not (tmp_path / "checkpoint.pt").exists()
    assert sorted(losses(tmp_path)) == list(range(1, 9))
    assert_follows(full_run, tmp_path)


def test_a_sharded_run_directory_is_refused_without_resume(ep_run, corpus, full_run, tmp_path):
    out, _ = ep_run
    with pytest.raises(ValueError, match=r"already holds a training run \(checkpoint/step-00000008\)"):
        train(parse_config(run_args(corpus, full_run, out)))
    assert torch.load(step_dir(out, 8) / STATE_FILE, weights_only=False)["step"] == 8
