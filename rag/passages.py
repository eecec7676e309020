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
import re
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


# A line that is code, grammar or a list item, never a wrapped line of prose.
_NOT_PROSE = re.compile(r"^\s*(?:>>>|\.\.\.|#|[-*+\u2022] |\d+[.)] )|::=|[={}]|^\s*(?:def|class|import|from|return) ")
_WRAP_MIN_CHARS = 40  # a line this long that the next one continues was wrapped, not broken on purpose


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _continues(prev: str, line: str) -> bool:
    """Whether `line` is the wrapped continuation of the prose line `prev` (same indentation, both prose)."""
    return (
        bool(line.strip())
        and _indent(prev) == _indent(line)
        and len(prev.strip()) >= _WRAP_MIN_CHARS
        and not _NOT_PROSE.search(prev)
        and not _NOT_PROSE.search(line)
    )


def unwrap(text: str) -> str:
    """Hard-wrapped prose joined into one line per paragraph, its runs of spaces collapsed: documentation wrapped
    at ~72 columns reads the way an answer quotes it (llm.grounding.quotable), so answers copy from the prompt token
    for token (n-gram speculation drafts from it, quote decoding matches it). Code, grammar, list items and
    short lines keep their line breaks and indentation; blank lines (paragraphs) are kept.

        "A yield statement is\nequivalent to an  expression.\n\n   yield <expr>\n   yield from <expr>"
        -> "A yield statement is equivalent to an expression.\n\n   yield <expr>\n   yield from <expr>"
    """
    out: list[str] = []
    last = ""  # the previous physical line (what decides whether the next one continues it)
    for line in text.split("\n"):
        if out and last and _continues(last, line):
            out[-1] = f"{out[-1]} {' '.join(line.split())}"
        else:
            prose = line.strip() and not _NOT_PROSE.search(line)
            out.append(line[: _indent(line)] + " ".join(line.split()) if prose else line)
        last = line
    return "\n".join(out)


def render_passage(p: Passage) -> str:
    """`[n] (source) text`: the passage as the prompt shows it, its prose unwrapped (`unwrap`)."""
    assert p.number >= 1, "number the passages first (numbered)"
    label = f" ({p.source})" if p.source else ""
    return f"[{p.number}]{label} {unwrap(p.text.strip())}"
