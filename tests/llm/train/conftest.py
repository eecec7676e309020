"""Shared fixtures of the trainer's tests: a small real-English corpus, a tiny-model command line, one finished
8-step run (built once per session: the resume, DDP, export and fine-tuning tests all compare against it), and a
BPE tokenizer trained on a few synthetic documents."""

from __future__ import annotations

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
def tok():
    return train_tokenizer(iter(DOCS), vocab_size=300)
