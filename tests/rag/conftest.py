"""Fixtures of the rag tests: hits over one small document, and a tiny BPE tokenizer with the chat template."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

DOC = "Alpha beta gamma. Delta epsilon zeta. Eta theta iota. Kappa lambda mu. Nu xi omicron."


@dataclass
class H:
    """A retrieval hit, as rag reads one (rag.passages.HitLike)."""

    doc_id: str
    chunk_id: int
    score: float
    text: str
    source: str
    start: int
    end: int


def hit(doc_id, chunk_id, score, start, end, text=DOC):
    return H(doc_id, chunk_id, score, text[start:end], f"{doc_id}.txt", start, end)


@pytest.fixture(scope="session")
def tok():
    from llm.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer([DOC * 5, "Context Question passages answer cite"], vocab_size=300)
