"""N-gram (prompt-lookup) drafting, as vLLM's ngram proposer and transformers' prompt lookup decoding: the last n
tokens of a sequence (n from prompt_lookup_max down to prompt_lookup_min) are looked up earlier in its own prompt
+ output, and the tokens that followed the first earlier occurrence are the draft.

RAG answers copy names, code and sentences from their passages, so once an answer starts quoting, the passage in
the prompt predicts the next tokens and the target model only has to confirm them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class NgramProposer:
    """propose(token_ids, k) -> up to k draft tokens ([] when no n-gram of at least min_n tokens recurs)."""

    def __init__(self, min_n: int, max_n: int):
        assert 1 <= min_n <= max_n, (min_n, max_n)  # SpeculativeConfig checked them
        self.min_n, self.max_n = min_n, max_n

    def propose(self, token_ids: Sequence[int], k: int) -> list[int]:
        L = len(token_ids)
        if k < 1 or L <= self.min_n:
            return []
        tokens = np.asarray(token_ids, dtype=np.int64)  # (L,)
        for n in range(min(self.max_n, L - 1), self.min_n - 1, -1):  # longest match first
            suffix = tokens[L - n :]
            # Windows starting at 0 .. L-1-n: every earlier n-gram, not the suffix itself; each has a successor.
            windows = sliding_window_view(tokens[: L - 1], n)  # (L-n, n)
            hits = np.flatnonzero((windows == suffix).all(axis=1))
            if hits.size:
                start = int(hits[0]) + n  # NOTE: the first occurrence, as vLLM and transformers: in a RAG prompt
                return tokens[start : start + k].tolist()  # that is the passage, which continues the furthest
        return []
