"""Fixtures of the rag tests: hits over one small document, and a tiny BPE tokenizer with the chat template."""

from __future__ import annotations

import json
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
