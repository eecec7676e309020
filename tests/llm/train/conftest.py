"""Shared fixtures of the trainer's tests: a small real-English corpus, a tiny-model command line, one finished
8-step run (built once per session: the resume, DDP, sharded, export and fine-tuning tests all compare against it),
the same run on 2 expert-parallel processes, a torchrun launcher, and a BPE tokenizer trained on a few synthetic
documents."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llm.train import parse_config, read_metrics, train
from llm.train.dataset import train_tokenizer

ROOT = Path(__file__).resolve().parents[3]
# tiny model, 32-token sequences, batch 4: a step is a few ms; every path (MoE aux loss, eval, sample) runs.
BASE = [
    "--preset",
    "tiny",
    "--seq-len",
    "32",
    "--batch-size",
    "4",
    "--vocab-size",
    "300",
    "--warmup-steps",
    "2",
    "--eval-interval",
    "4",
    "--eval-batches",
    "2",
    "--sample-tokens",
    "4",
    "--threads",
    "1",
    "--quiet",
    "--device",
    "cpu",
]
FT = [a for a in BASE if a not in ("--vocab-size", "300")]  # an init model brings its own tokenizer

DOCS = [
    f"Document {i}: the {w} jumps over the lazy dog while the router balances experts."
    for i, w in enumerate(["fox", "cat", "cow", "owl", "elk", "bee", "ant", "eel"] * 8)
]


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl")}


def assert_follows(reference: Path, out: Path, tol: float = 1e-3) -> None:
    """out's run follows the reference run per step: loss and val loss within tol, and the gradient norm within a
    relative tol (Adam hides a wrongly scaled gradient from the losses; the norm shows it)."""
    want = {r["step"]: r for r in read_metrics(reference / "metrics.jsonl")}
    got = {r["step"]: r for r in read_metrics(out / "metrics.jsonl")}
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    for step, a in want.items():
        b = got[step]
        assert abs(a["loss"] - b["loss"]) < tol, (step, a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) < tol * a["grad_norm"], (step, a["grad_norm"], b["grad_norm"])
        if "val_loss" in a:
            assert abs(a["val_loss"] - b["val_loss"]) < tol, (step, a["val_loss"], b["val_loss"])


def memory_per_rank(stderr: str) -> tuple[str, float]:
    """(layout, parameters in MiB) of the trainer's "memory per rank (...): parameters X MiB" line."""
    m = re.search(r"memory per rank \((.*?)\): parameters ([\d.]+) MiB", stderr)
    assert m, stderr[-2000:]
    return m[1], float(m[2])


def param_mib(run: Path) -> tuple[float, float]:
    """(all parameters, the routed experts' share) of a run's exported model, in MiB of fp32."""
    from llm.checkpoint import load_model

    model = load_model(run)
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    return model.num_params() * 4 / 2**20, experts * 4 / 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node nproc -m llm.train *args` on gloo (one thread per process); the test fails with
    the end of stderr when it does."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "llm.train",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_args(corpus: Path, full_run: Path, out: Path, max_steps: int = 8) -> list[str]:
    """full_run's command line (same tokenizer, data, seed and schedule) into out, up to max_steps."""
    return [
        "--data",
        str(corpus),
        "--out",
        str(out),
        "--max-steps",
        str(max_steps),
        "--lr-decay-steps",
        "8",
        "--grad-accum",
        "2",
        "--tokenizer",
        str(full_run / "tokenizer.json"),
        *BASE,
    ]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """40 documents of real English (Python's language reference topics), as .md files."""
    from pydoc_data.topics import topics

    d = tmp_path_factory.mktemp("corpus")
    for key in sorted(topics)[:40]:
        (d / f"{key}.md").write_text(topics[key][:3000])
    return d


@pytest.fixture(scope="session")
def full_run(corpus, tmp_path_factory) -> Path:
    """8 steps, grad accumulation 2, uninterrupted."""
    out = tmp_path_factory.mktemp("full")
    train(parse_config(["--data", str(corpus), "--out", str(out), "--max-steps", "8", "--grad-accum", "2", *BASE]))
    return out


@pytest.fixture(scope="session")
def ep_run(corpus, full_run, tmp_path_factory) -> tuple[Path, str]:
    """full_run on 2 processes with --expert-parallel 2 (each holds 2 of the 4 experts per layer): (out, stderr)."""
    out = tmp_path_factory.mktemp("ep2")
    proc = torchrun(2, [*run_args(corpus, full_run, out), "--expert-parallel", "2"])
    return out, proc.stderr


@pytest.fixture(scope="session")
def tok():
    return train_tokenizer(iter(DOCS), vocab_size=300)
