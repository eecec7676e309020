"""Passages: merging overlapping chunks into exact spans, dropping duplicates, numbering, rendering."""

from __future__ import annotations

import pytest

from llm.grounding import quotable
from rag.passages import merge_hits, numbered, render_passage, unwrap
from tests.rag.conftest import DOC, hit


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


def test_numbered_copies_number_in_the_order_given_and_render_with_their_number():
    ps = merge_hits([hit("a", 1, 0.2, 0, 17), hit("b", 2, 0.9, 38, 53)])
    nums = numbered(ps)
    assert [(p.number, p.doc_id) for p in nums] == [(1, "b"), (2, "a")]
    assert [p.number for p in ps] == [0, 0]  # the originals are left alone
    assert render_passage(nums[0]) == "[1] (b.txt) Eta theta iota."
    with pytest.raises(AssertionError):
        render_passage(ps[0])  # an unnumbered passage has no citation number to show


WRAPPED = (
    "A yield statement is semantically equivalent to a yield expression.\nThe yield statement can be used to"
    " omit the\nparentheses.  For example:\n\n   yield <expr>\n   yield from <expr>\n\n"
    "   for i in range(10):\n       print(i)\n\n* a list item that is long enough to look like prose\n"
    "* another item\n\nA short line\nstays."
)


def test_unwrap_joins_wrapped_prose_and_keeps_code_lists_and_paragraphs():
    out = unwrap(WRAPPED)
    paragraphs = out.split("\n\n")
    assert paragraphs[0] == (
        "A yield statement is semantically equivalent to a yield expression. The yield statement can be used to"
        " omit the parentheses. For example:"
    )
    assert paragraphs[1] == "   yield <expr>\n   yield from <expr>"  # short code lines keep their breaks
    assert paragraphs[2] == "   for i in range(10):\n       print(i)"  # indentation kept
    assert paragraphs[3].count("\n") == 1  # list items stay one per line
    assert paragraphs[4] == "A short line\nstays."  # a short line was broken on purpose
    # Prose reads in the prompt the way an answer quotes it.
    assert quotable(paragraphs[0]) == paragraphs[0] == quotable(WRAPPED).split("\n\n")[0]


def test_unwrap_changes_only_whitespace_and_render_passage_uses_it():
    assert unwrap(WRAPPED).split() == WRAPPED.split()
    assert unwrap(unwrap(WRAPPED)) == unwrap(WRAPPED)
    p = numbered(merge_hits([hit("a", 1, 0.2, 0, 17)]))[0]
    p.text = WRAPPED
    assert render_passage(p) == f"[1] ({p.source}) {unwrap(WRAPPED)}"
