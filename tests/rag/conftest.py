"""Fixtures of the rag tests: hits over one small document, a tiny BPE tokenizer with the chat template, and the
bundled extractive reader."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

BUNDLED_READER = Path(__file__).resolve().parents[2] / "models" / "pqrag-reader"
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


@pytest.fixture(scope="session")
def reader():
    """The bundled extractive reader (models/pqrag-reader), loaded once for the reader, pipeline and calibration
    tests (each module loaded its own: the encoder built and its weights read, about a second on 2 cores). Tests only
    read it; one that needs other settings wraps its model and tokenizer in a Reader of its own."""
    from rag.reader import Reader

    return Reader.load(BUNDLED_READER)


def squad_fixture(tmp_path, titles):
    """A tiny SQuAD in BEIR layout under tmp_path: 3 paragraphs per title, one question each."""
    corpus, queries, answers = [], [], []
    for t in titles:
        for j in range(3):
            text = f"{t} paragraph {j} says that the answer number {j} is in {t} city {j}. It has more words here."
            corpus.append({"_id": f"{t}_{j}", "title": t, "text": text})
            qid = f"q-{t}-{j}"
            queries.append({"_id": qid, "text": f"Where is answer number {j} of {t}?"})
            gold = f"{t} city {j}"
            answers.append({"_id": qid, "doc_id": f"{t}_{j}", "answers": [gold], "answer_starts": [text.index(gold)]})
    for name, rows in (("corpus", corpus), ("queries", queries), ("answers", answers)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path
