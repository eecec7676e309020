"""NgramProposer: the longest n-gram suffix in [min_n, max_n], its first earlier occurrence, up to k tokens."""

from __future__ import annotations

import pytest

from llm.speculative_ngram import NgramProposer


@pytest.mark.parametrize(
    "tokens, k, want",
    [
        ([1, 2, 3, 4, 5, 9, 1, 2, 3], 4, [4, 5, 9, 1]),  # suffix 1 2 3 found at the start
        ([1, 2, 3, 4, 5, 9, 1, 2, 3], 2, [4, 5]),  # cut to k
        ([7, 8, 1, 2, 6, 1, 2, 3, 1, 2], 3, [6, 1, 2]),  # the first occurrence, not the latest
        ([1, 2, 3, 4, 9, 2, 3, 5, 7, 2, 3], 2, [4, 9]),  # 2 3 recurs, 9 2 3 does not: the longest match wins
        ([5, 6, 7, 5, 6], 3, [7, 5, 6]),  # the continuation may run into the suffix itself
        ([1, 1, 1, 1], 3, [1]),  # the continuation ends at the last token
        ([1, 2, 3, 4], 3, []),  # nothing recurs
        ([1, 2], 3, []),  # too short
        ([1, 2, 1, 2], 0, []),  # no room
    ],
)
def test_propose(tokens, k, want):
    assert NgramProposer(2, 3).propose(tokens, k) == want


def test_min_n_bounds_the_match():
    tokens = [4, 9, 8, 7, 6, 9]  # only a 1-gram (9) recurs
    assert NgramProposer(1, 3).propose(tokens, 2) == [8, 7]
    assert NgramProposer(2, 3).propose(tokens, 2) == []


def test_longer_ngrams_than_max_are_not_needed():
    # max_n caps the suffix looked up: with max_n 1 the last token alone decides (its first occurrence)
    tokens = [3, 5, 1, 3, 6, 2, 3]
    assert NgramProposer(1, 1).propose(tokens, 1) == [5]
    assert NgramProposer(1, 2).propose(tokens, 1) == [5]  # 2 3 does not recur: falls back to the 1-gram
