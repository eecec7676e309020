import re

import numpy as np
import pytest

from common.errors import InvalidArgumentError
from retrieval.chunker import (
    INSIDE_WORD,
    LINE,
    PARAGRAPH,
    SENTENCE,
    WORD,
    Chunker,
    ChunkerConfig,
    boundary_scores,
    chunk_spans,
)
from retrieval.embedder import get_embedder


@pytest.fixture(scope="module")
def embedder():
    return get_embedder(device="cpu")


def whitespace_offsets(text: str) -> np.ndarray:
    """A toy tokenizer: every run of non-space characters is one token."""
    return np.array([m.span() for m in re.finditer(r"\S+", text)], dtype=np.int64).reshape(-1, 2)


SENTENCES = " ".join(
    f"Sentence number {i} talks about the {['river', 'mountain', 'library', 'engine'][i % 4]} and its history."
    for i in range(80)
)
MIXED = (
    "Première partie — naïve façade, Ünïcödé 😀 and 東京の天気は晴れです。次の文です！\n\n"
    "Second paragraph with tabs\tand  double  spaces; then a line\nbreak and a URL https://example.com/a?b=c.\n\n\n"
    + "Supercalifragilisticexpialidocious" * 20
    + " The end."
)


def check_chunks(text, offsets, chunks, config):
    assert chunks, "a text with tokens gives at least one chunk"
    for c in chunks:
        assert c.text == text[c.start : c.end]
        assert 1 <= c.n_tokens <= config.chunk_tokens
    # The chunks cover every token, in order, each one reaching past the previous one.
    starts = offsets[:, 0]
    assert chunks[0].start == starts[0] and chunks[-1].end == offsets[-1, 1]
    for a, b in zip(chunks, chunks[1:]):
        nxt = np.searchsorted(starts, a.end)  # first token after chunk a
        assert nxt == len(starts) or b.start <= starts[nxt], "no token falls between two chunks"
        assert b.start > a.start and b.end > a.end


@pytest.mark.parametrize("text", [SENTENCES, MIXED])
@pytest.mark.parametrize("size,overlap", [(200, 40), (32, 8), (16, 0), (10, 9)])
def test_spans_are_exact_and_cover_the_text(embedder, text, size, overlap):
    config = ChunkerConfig(chunk_tokens=size, overlap_tokens=overlap)
    offsets = embedder.token_offsets(text)
    chunks = Chunker(config, embedder.token_offsets).chunk(text)
    check_chunks(text, offsets, chunks, config)
    # Re-tokenizing a chunk gives the tokens it was cut from, so it fits the model input.
    for c in chunks:
        assert len(embedder.token_offsets(c.text)) == c.n_tokens <= embedder.max_text_tokens


def test_overlap_is_bounded_and_present(embedder):
    config = ChunkerConfig(chunk_tokens=48, overlap_tokens=12)
    offsets = embedder.token_offsets(SENTENCES)
    spans = chunk_spans(SENTENCES, offsets, config)
    assert len(spans) > 5
    for (_i0, t0), (i1, _t1) in zip(spans, spans[1:]):
        shared = t0 - i1
        assert 0 < shared <= 12
    no_overlap = chunk_spans(SENTENCES, offsets, ChunkerConfig(chunk_tokens=48, overlap_tokens=0))
    for (_, t0), (i1, _) in zip(no_overlap, no_overlap[1:]):
        assert i1 == t0


def test_cuts_prefer_sentence_and_paragraph_ends(embedder):
    chunks = Chunker(ChunkerConfig(chunk_tokens=60, overlap_tokens=15), embedder.token_offsets).chunk(SENTENCES)
    assert len(chunks) > 3
    # Every chunk but the last ends a sentence, and overlaps start at a sentence.
    assert all(c.text.endswith("history.") for c in chunks)
    assert all(c.text.startswith("Sentence number") for c in chunks)

    paras = "\n\n".join(f"Paragraph {p}. " + " ".join(f"Short line {p}.{i} here." for i in range(4)) for p in range(12))
    chunks = Chunker(ChunkerConfig(chunk_tokens=80, overlap_tokens=0), embedder.token_offsets).chunk(paras)
    assert len(chunks) > 2
    for c in chunks[:-1]:
        after = paras[c.end : c.end + 2]
        assert after == "\n\n", f"chunk should end at a paragraph break, is followed by {after!r}"


def test_text_without_boundaries_is_cut_hard(embedder):
    text = "ab-" * 1000  # word pieces and punctuation without whitespace: no boundary to prefer
    config = ChunkerConfig(chunk_tokens=50, overlap_tokens=10)
    offsets = embedder.token_offsets(text)
    chunks = Chunker(config, embedder.token_offsets).chunk(text)
    check_chunks(text, offsets, chunks, config)
    assert max(c.n_tokens for c in chunks) == 50


def test_empty_and_short_texts(embedder):
    chunker = Chunker(ChunkerConfig(), embedder.token_offsets)
    assert chunker.chunk("") == []
    assert chunker.chunk(" \n\t ") == []
    [c] = chunker.chunk("  Hello, world!  ")
    assert (c.start, c.end, c.text) == (2, 15, "Hello, world!")


def test_boundary_scores_with_a_toy_tokenizer():
    text = "One two. Three\nfour\n\nfive (six.) seven"
    offs = whitespace_offsets(text)
    s = boundary_scores(text, offs)
    words = [text[a:b] for a, b in offs]
    assert words == ["One", "two.", "Three", "four", "five", "(six.)", "seven"]
    assert s.tolist() == [PARAGRAPH, WORD, SENTENCE, LINE, PARAGRAPH, WORD, SENTENCE, PARAGRAPH]
    # Adjacent pieces of one word cannot be cut between.
    offs = np.array([[0, 3], [3, 6]])
    assert boundary_scores("abcdef", offs).tolist() == [PARAGRAPH, INSIDE_WORD, PARAGRAPH]


def test_chunk_spans_with_a_toy_tokenizer_hit_the_size_limit():
    text = " ".join(f"w{i}" for i in range(1000))
    offs = whitespace_offsets(text)
    spans = chunk_spans(text, offs, ChunkerConfig(chunk_tokens=100, overlap_tokens=20))
    # Only word boundaries: the latest one is taken, so chunks are full and overlaps maximal.
    assert spans[0] == (0, 100)
    assert all(t - i == 100 for i, t in spans[:-1])
    assert all(t0 - i1 == 20 for (_, t0), (i1, _) in zip(spans, spans[1:]))
    assert spans[-1][1] == 1000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"chunk_tokens": 0},
        {"chunk_tokens": 10, "overlap_tokens": 10},
        {"overlap_tokens": -1},
        {"min_fill": 0.0},
        {"chunk_tokens": 1.5},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(InvalidArgumentError):
        ChunkerConfig(**kwargs)
