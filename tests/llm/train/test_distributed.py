"""Two DDP processes (torchrun, gloo) train the same model as one process on the same global batch."""

from __future__ import annotations

from llm.train.distributed import DistInfo, all_reduce, broadcast_from_main, setup_distributed
from tests.llm.train.conftest import assert_follows, run_args, torchrun


def test_two_ddp_processes_match_one_with_the_same_global_batch(corpus, full_run, tmp_path):
    """torchrun, 2 gloo processes x 2 sequences vs the 1-process run of 4 sequences (same tokenizer, data, seed)."""
    torchrun(2, run_args(corpus, full_run, tmp_path))
    assert_follows(full_run, tmp_path, tol=1e-4)
    assert (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "checkpoint").exists()  # replicated: one file


def test_a_world_of_one_needs_no_process_group(monkeypatch):
    import torch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = setup_distributed("cpu")
    assert info == DistInfo() and info.is_main and not info.enabled
    t = torch.ones(3)
    assert all_reduce(t, info) is t and t.tolist() == [1, 1, 1]
    assert broadcast_from_main("message", info) == "message"
