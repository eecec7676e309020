"""Two DDP processes (torchrun, gloo) train the same model as one process on the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np

from llm.train import read_metrics
from llm.train.distributed import DistInfo, all_reduce, broadcast_from_main, setup_distributed
from tests.llm.train.conftest import BASE, ROOT, losses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ddp_processes_match_one_with_the_same_global_batch(corpus, full_run, tmp_path):
    """torchrun, 2 gloo processes x 2 sequences vs the 1-process run of 4 sequences (same tokenizer, data, seed)."""
    args = [
        "--data",
        str(corpus),
        "--out",
        str(tmp_path),
        "--max-steps",
        "8",
        "--grad-accum",
        "2",
        "--tokenizer",
        str(full_run / "tokenizer.json"),
        *BASE,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "llm.train",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = losses(full_run), losses(tmp_path)
    assert sorted(b) == list(range(1, 9))
    for step in a:
        assert abs(a[step] - b[step]) < 1e-4, (step, a[step], b[step])
    va = [r["val_loss"] for r in read_metrics(full_run / "metrics.jsonl") if "val_loss" in r]
    vb = [r["val_loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if "val_loss" in r]
    assert np.allclose(va, vb, atol=1e-4)


def test_a_world_of_one_needs_no_process_group(monkeypatch):
    import torch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = setup_distributed("cpu")
    assert info == DistInfo() and info.is_main and not info.enabled
    t = torch.ones(3)
    assert all_reduce(t, info) is t and t.tolist() == [1, 1, 1]
    assert broadcast_from_main("message", info) == "message"
