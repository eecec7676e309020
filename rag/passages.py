"""Context passages: retrieved hits merged into passages, and the citation numbers [1], [2], ... they carry.

Pure functions, no I/O, so the rules are tested directly:
- hits of one document whose character spans overlap or touch are merged into one passage (chunkers overlap
  neighbouring chunks; showing the overlap twice wastes the window and confuses citation numbers);
- passages with the same text (a document ingested twice under two ids) are shown once;
- passages are numbered [1], [2], ... in the order they are shown, best score first, so the answer can cite them
  and the citations sent to the client carry the same numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class HitLike(Protocol):
    """What a retrieval hit (retrieval.Hit) offers a passage."""

    doc_id: str
    chunk_id: int
    score: float
    text: str
    source: str
    start: int
    end: int


@dataclass
class Passage:
    doc_id: str
    chunk_id: int  # the best-scoring chunk of a merged passage
    score: float  # the best score of its chunks
    text: str
    source: str
    start: int  # character span of text in the document
    end: int
    number: int = 0  # [number] in the prompt and in the citation; set by `numbered` (0: not numbered yet)


def merge_hits(hits: Sequence[HitLike]) -> list[Passage]:
    """Merge overlapping/adjacent spans of the same document, drop duplicate texts; best score first."""
    by_doc: dict[str, list[HitLike]] = {}
    for h in hits:
        by_doc.setdefault(h.doc_id, []).append(h)
    passages: list[Passage] = []
    for doc_id, doc_hits in by_doc.items():
        doc_hits = sorted(doc_hits, key=lambda h: (h.start, h.end))
        cur: Passage | None = None
        for h in doc_hits:
            if cur is not None and h.start <= cur.end:  # overlapping or touching: extend the passage
                if h.end > cur.end:
                    cur.text += h.text[cur.end - h.start :]
                    cur.end = h.end
                if h.score > cur.score:
                    cur.score, cur.chunk_id = h.score, h.chunk_id
                continue
            if cur is not None:
                passages.append(cur)
            cur = Passage(doc_id, h.chunk_id, h.score, h.text, h.source, h.start, h.end)
        if cur is not None:
            passages.append(cur)
    passages.sort(key=lambda p: -p.score)
    seen: set[str] = set()
    unique = []
    for p in passages:
        key = " ".join(p.text.split())
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def numbered(passages: Sequence[Passage]) -> list[Passage]:
    """Copies numbered 1..n in the order given: the order the prompt shows them in is the citation order."""
    return [dataclasses.replace(p, number=i) for i, p in enumerate(passages, start=1)]


def render_passage(p: Passage) -> str:
    assert p.number >= 1, "number the passages first (numbered)"
    label = f" ({p.source})" if p.source else ""
    return f"[{p.number}]{label} {p.text.strip()}"
