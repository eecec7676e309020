"""Token-aware chunking with overlap that keeps exact character spans.

A document is cut into windows of at most `chunk_tokens` word pieces of the embedder's own
tokenizer, so every chunk fits the model's input (MiniLM: 256 pieces with [CLS]/[SEP]) and nothing
is silently truncated at embedding time. Within the last part of each window the cut goes to the
strongest boundary available (paragraph > sentence > line > word), and consecutive chunks share up
to `overlap_tokens` pieces, starting the overlap at a sentence or word start when one is there.

Every chunk is a span of the original text: `chunk.text == text[chunk.start:chunk.end]`, so an
answer can cite exact characters.

    chunker = Chunker(ChunkerConfig(chunk_tokens=200, overlap_tokens=40), embedder.token_offsets)
    chunks = chunker.chunk(text)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from common.checks import is_int, positive_int
from common.errors import InvalidArgumentError

# Boundary strength before token t (higher is a better place to cut).
INSIDE_WORD, WORD, LINE, SENTENCE, PARAGRAPH = 0, 1, 2, 3, 4

_SENTENCE_END = np.array([ord(c) for c in ".!?…。！？"], dtype=np.uint32)
_CLOSERS = np.array([ord(c) for c in "\"')]”’»"], dtype=np.uint32)
_NEWLINE = re.compile(r"\n")


@dataclass
class ChunkerConfig:
    chunk_tokens: int = 200  # word pieces per chunk at most
    overlap_tokens: int = 40  # word pieces shared by consecutive chunks at most
    # A cut is looked for in the last (1 - min_fill) of a window, so chunks stay >= min_fill full.
    min_fill: float = 0.5

    def __post_init__(self) -> None:
        positive_int(self.chunk_tokens, "chunk_tokens")
        if not is_int(self.overlap_tokens) or not 0 <= self.overlap_tokens < self.chunk_tokens:
            raise InvalidArgumentError(
                f"overlap_tokens must be in 0..chunk_tokens-1 ({self.chunk_tokens - 1}), got {self.overlap_tokens!r}"
            )
        if not 0.0 < self.min_fill <= 1.0:
            raise InvalidArgumentError(f"min_fill must be in (0, 1], got {self.min_fill!r}")


@dataclass(frozen=True)
class Chunk:
    text: str  # == document_text[start:end]
    start: int  # character offsets in the document text
    end: int
    n_tokens: int  # word pieces (without special tokens)


def boundary_scores(text: str, offsets: np.ndarray) -> np.ndarray:
    """(n + 1,) int8: how good a cut is before token t, for t in 0..n (both ends are PARAGRAPH).

    offsets: (n, 2) character spans of the tokens, increasing.
    """
    n = len(offsets)
    scores = np.full(n + 1, PARAGRAPH, dtype=np.int8)
    if n < 2:
        return scores
    prev_end = offsets[:-1, 1]  # (n-1,) end of token t-1, for t in 1..n-1
    next_start = offsets[1:, 0]  # (n-1,) start of token t
    gap = next_start > prev_end
    inner = np.where(gap, WORD, INSIDE_WORD).astype(np.int8)

    # Newlines inside each gap, counted with a binary search over their positions.
    nl = np.array([m.start() for m in _NEWLINE.finditer(text)], dtype=np.int64)
    if len(nl):
        n_nl = np.searchsorted(nl, next_start) - np.searchsorted(nl, prev_end)
        inner = np.where(n_nl >= 1, LINE, inner)

    # Sentence ends: the gap follows . ! ? (possibly behind a closing quote or bracket).
    cp = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    last = cp[np.maximum(prev_end - 1, 0)]
    before = cp[np.maximum(prev_end - 2, 0)]
    ends_sentence = np.isin(last, _SENTENCE_END) | (np.isin(last, _CLOSERS) & np.isin(before, _SENTENCE_END))
    inner = np.where(gap & ends_sentence, np.maximum(inner, SENTENCE), inner)
    if len(nl):
        inner = np.where(n_nl >= 2, PARAGRAPH, inner)  # a blank line between the tokens
    scores[1:n] = inner
    return scores


def chunk_spans(text: str, offsets: np.ndarray, config: ChunkerConfig) -> list[tuple[int, int]]:
    """Token ranges [i, t) of the chunks of `text`, in order, covering every token.

    offsets: (n, 2) character spans of the word pieces of `text` (from the embedder's tokenizer).
    """
    n = len(offsets)
    if n == 0:
        return []
    size, overlap = config.chunk_tokens, config.overlap_tokens
    scores = boundary_scores(text, offsets)
    min_len = max(1, int(size * config.min_fill))
    spans: list[tuple[int, int]] = []
    i, prev_t = 0, 0
    while True:
        j = min(i + size, n)
        if j == n:
            spans.append((i, n))
            return spans
        # Cut at the strongest boundary in [lo, j], the latest one among equals. lo > prev_t keeps
        # each chunk reaching past the previous one even when the overlap is large.
        lo = max(i + min_len, prev_t + 1)
        seg = scores[lo : j + 1]
        best = seg.max()
        t = j if best == INSIDE_WORD else lo + int(np.flatnonzero(seg == best)[-1])
        spans.append((i, t))
        prev_t = t
        if overlap == 0:
            i = t
            continue
        # Start the next chunk at the strongest boundary within the last `overlap` tokens of this
        # one, the earliest among equals (the most shared context); never at or before i.
        o_lo = max(i + 1, t - overlap)
        if o_lo >= t:
            i = t
            continue
        seg = scores[o_lo:t]
        best = seg.max()
        i = t - overlap if best == INSIDE_WORD and t - overlap > i else o_lo + int(np.flatnonzero(seg == best)[0])


class Chunker:
    """Cuts documents with a tokenizer: tokenize(text) -> (n, 2) character offsets of word pieces."""

    def __init__(self, config: ChunkerConfig, tokenize: Callable[[str], np.ndarray]):
        self.config = config
        self.tokenize = tokenize

    def chunk(self, text: str) -> list[Chunk]:
        offsets = np.asarray(self.tokenize(text), dtype=np.int64).reshape(-1, 2)
        assert len(offsets) == 0 or (offsets[:, 0] <= offsets[:, 1]).all()
        chunks = []
        for i, t in chunk_spans(text, offsets, self.config):
            start, end = int(offsets[i, 0]), int(offsets[t - 1, 1])
            chunks.append(Chunk(text[start:end], start, end, t - i))
        return chunks
