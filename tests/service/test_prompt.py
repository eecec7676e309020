"""Prompt building: merging overlapping chunks, numbering, trimming to the window, the conversation query."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from llm.tokenizer import train_bpe_tokenizer
from service.prompt import build_prompt, conversation_query, merge_hits

DOC = "Alpha beta gamma. Delta epsilon zeta. Eta theta iota. Kappa lambda mu. Nu xi omicron."


@dataclass
class H:
    doc_id: str
    chunk_id: int
    score: float
    text: str
    source: str
    start: int
    end: int


def hit(doc_id, chunk_id, score, start, end, text=DOC):
    return H(doc_id, chunk_id, score, text[start:end], f"{doc_id}.txt", start, end)


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer([DOC * 5, "Context Question passages answer cite"], vocab_size=300)


def test_overlapping_and_touching_chunks_of_a_document_merge_into_the_exact_span():
    hits = [hit("a", 2, 0.5, 18, 52), hit("a", 1, 0.9, 0, 36), hit("a", 3, 0.4, 52, 70), hit("b", 7, 0.7, 0, 17)]
    ps = merge_hits(hits)
    assert [(p.doc_id, p.start, p.end) for p in ps] == [("a", 0, 70), ("b", 0, 17)]
    assert ps[0].text == DOC[0:70]  # no repeated overlap, nothing lost
    assert (ps[0].score, ps[0].chunk_id) == (0.9, 1)  # the best chunk names the passage


def test_disjoint_chunks_stay_apart_and_duplicate_texts_are_shown_once():
    hits = [hit("a", 1, 0.3, 0, 17), hit("a", 3, 0.8, 52, 70), hit("copy", 9, 0.5, 0, 17)]
    ps = merge_hits(hits)
    assert [(p.doc_id, p.chunk_id) for p in ps] == [("a", 3), ("copy", 9)]  # a/1 has the same text as copy/9


def test_passages_are_numbered_by_score_and_rendered_in_the_prompt(tok):
    hits = [hit("a", 1, 0.2, 0, 17), hit("b", 2, 0.9, 38, 53)]
    p = build_prompt(tok, [{"role": "user", "content": "What follows eta?"}], hits, 512, 32)
    assert [(x.number, x.doc_id) for x in p.passages] == [(1, "b"), (2, "a")]
    text = tok.decode(p.token_ids, skip_special_tokens=False)
    assert "[1] (b.txt) Eta theta iota." in text and "[2] (a.txt) Alpha beta gamma." in text
    assert text.index("[1]") < text.index("[2]") < text.index("Question: What follows eta?")
    assert text.endswith("<|assistant|>\n")


def test_context_is_trimmed_by_score_to_fit_the_window(tok):
    long_doc = " ".join(f"word{i}" for i in range(400))
    hits = [
        H("big", 1, 0.5, long_doc, "big.txt", 0, len(long_doc)),
        hit("small", 2, 0.9, 0, 17),
        hit("low", 3, 0.1, 18, 36),
    ]
    budget = 256
    p = build_prompt(tok, [{"role": "user", "content": "q?"}], hits, budget + 64, 64)
    assert len(p.token_ids) <= budget
    assert [x.doc_id for x in p.passages] == ["small", "low"] and p.dropped == 1  # the long one does not fit
    roomy = build_prompt(tok, [{"role": "user", "content": "q?"}], hits, 100_000, 64)
    assert [x.doc_id for x in roomy.passages] == ["small", "big", "low"] and roomy.dropped == 0


def test_a_question_that_cannot_fit_is_refused_with_the_numbers(tok):
    with pytest.raises(ValueError, match=r"max_tokens=500 .* window of 512"):
        build_prompt(tok, [{"role": "user", "content": "word " * 100}], [], 512, 500)


def test_conversation_query_reads_the_previous_user_turn():
    msgs = [
        {"role": "user", "content": "How do I sort a list?"},
        {"role": "assistant", "content": "Use sorted."},
        {"role": "user", "content": "And in reverse?"},
    ]
    assert conversation_query(msgs) == "How do I sort a list?\nAnd in reverse?"
    assert conversation_query(msgs[:1]) == "How do I sort a list?"
    with pytest.raises(ValueError):
        conversation_query([{"role": "assistant", "content": "hi"}])
