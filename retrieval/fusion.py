"""Search modes and the fusion of a dense and a lexical ranking into one (hybrid search).

    fused = fuse(dense, lexical, k=10, params=FusionParams())     # dense, lexical: Ranked lists, best first

Modes: "dense" (the vector index), "lexical" (FTS5 bm25, lexical.py) and "hybrid": both retrievers fetch
`candidates` chunks each and their rankings are fused:

* weighted fusion of normalised scores (the default): each list's scores are min-max normalised to [0, 1] and
  score(c) = alpha * dense + (1 - alpha) * lexical (a chunk missing from a list gets 0 there), the "relative score
  fusion" of Weaviate; alpha = 1 is dense only, 0 lexical only. alpha = 0.4 was chosen on SciFact's TRAIN claims
  (bench/hybrid.py --tune): it beat reciprocal rank fusion there by +0.03 nDCG@10, and then on SciFact test and
  SQuAD (bench/RESULTS.md), where RRF did not beat lexical alone. The scores carry how far apart the hits are,
  which ranks throw away.
* reciprocal rank fusion, when `rrf_k` is set (Cormack et al. 2009; Qdrant's and Milvus's default): score(c) =
  sum over the lists holding c of 1 / (rrf_k + rank), ranks from 1 (60 is the usual k). It reads ranks only, so
  the two retrievers' incomparable scores (a cosine, a bm25) never meet.

Every fused hit keeps the rank (from 1) and score it had in each list, or None where that retriever did not
return it. Ties are broken by the better dense rank, then the smaller chunk id, so results are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.checks import optional_positive_int
from common.errors import InvalidArgumentError

MODES = SEARCH_MODES = ("dense", "lexical", "hybrid")
DEFAULT_MODE = "hybrid"  # a collection's default unless it says otherwise (bench/hybrid.py: it wins on SciFact, SQuAD)


@dataclass(frozen=True)
class FusionParams:
    """How hybrid search fuses its two rankings; the one place their defaults live."""

    MAX_CANDIDATES = 1000  # chunks one retriever may fetch (SearchParams.MAX_K)

    rrf_k: int | None = None  # set: reciprocal rank fusion with this k (larger flattens the top ranks' weight)
    alpha: float = 0.4  # weighted fusion of min-max normalised scores: the dense side's weight (unused with rrf_k)
    candidates: int = 100  # chunks each retriever fetches before fusing (at least k)


@dataclass(frozen=True)
class Ranked:
    """One retriever's ranking: chunk ids (n,) int64 and their scores (n,) float64 (higher is better), best first."""

    ids: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls) -> Ranked:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float64))


@dataclass(frozen=True)
class Fused:
    """A fused hit: its chunk id and fused score, and its rank (from 1) and score in each list (None: absent)."""

    chunk_id: int
    score: float
    dense_rank: int | None
    dense_score: float | None
    lexical_rank: int | None
    lexical_score: float | None


def check_mode(mode: object) -> str | None:
    """A search mode, or None (the collection's default); InvalidArgumentError otherwise."""
    if mode is None or mode in MODES:
        return mode  # type: ignore[return-value]
    raise InvalidArgumentError(
        f"search mode must be one of {', '.join(MODES)} (or unset for the default), got {mode!r}"
    )


def check_fusion(rrf_k: object = None, alpha: object = None, candidates: object = None) -> FusionParams:
    """FusionParams from a caller's optional values (None: the default), checked. rrf_k chooses reciprocal rank
    fusion, alpha weighted fusion: one or the other."""
    defaults = FusionParams()
    rrf_k = optional_positive_int(rrf_k, "rrf_k")
    if rrf_k is not None and alpha is not None:
        raise InvalidArgumentError(
            "set rrf_k (reciprocal rank fusion) or alpha (weighted fusion of normalised scores), not both"
        )
    candidates = optional_positive_int(candidates, "candidates", FusionParams.MAX_CANDIDATES)
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise InvalidArgumentError(f"alpha must be a number in [0, 1] (or unset: {defaults.alpha}), got {alpha!r}")
        alpha = float(alpha)
    return FusionParams(
        rrf_k=rrf_k,
        alpha=defaults.alpha if alpha is None else alpha,
        candidates=defaults.candidates if candidates is None else candidates,
    )


def single(ranked: Ranked, dense: bool, k: int) -> list[Fused]:
    """One retriever's first k hits, reporting its own ranks and scores (dense or lexical mode)."""
    out = []
    for r, (i, s) in enumerate(zip(ranked.ids[:k].tolist(), ranked.scores[:k].tolist()), start=1):
        out.append(Fused(i, s, r, s, None, None) if dense else Fused(i, s, None, None, r, s))
    return out


def normalised(scores: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a list whose scores are all equal maps to 1 (each of its hits is its best)."""
    if len(scores) == 0:
        return scores
    lo, hi = float(scores.min()), float(scores.max())
    return np.ones_like(scores) if hi - lo <= 1e-12 else (scores - lo) / (hi - lo)


def fuse(dense: Ranked, lexical: Ranked, k: int, params: FusionParams) -> list[Fused]:
    """The k best chunks of the two rankings fused (module docstring), best first."""
    if params.rrf_k is not None:
        d_part = 1.0 / (params.rrf_k + np.arange(1, len(dense.ids) + 1))
        l_part = 1.0 / (params.rrf_k + np.arange(1, len(lexical.ids) + 1))
    else:
        d_part = params.alpha * normalised(dense.scores)
        l_part = (1.0 - params.alpha) * normalised(lexical.scores)
    ids = np.union1d(dense.ids, lexical.ids)  # sorted
    score = np.zeros(len(ids))
    d_pos = np.searchsorted(ids, dense.ids)
    l_pos = np.searchsorted(ids, lexical.ids)
    score[d_pos] += d_part
    score[l_pos] += l_part
    d_rank = np.full(len(ids), np.iinfo(np.int64).max)
    d_rank[d_pos] = np.arange(1, len(dense.ids) + 1)
    order = np.lexsort((ids, d_rank, -score))[:k]  # by score, then dense rank, then id
    d_of = {int(i): r for r, i in enumerate(dense.ids.tolist())}
    l_of = {int(i): r for r, i in enumerate(lexical.ids.tolist())}
    out = []
    for p in order.tolist():
        c = int(ids[p])
        dr, lr = d_of.get(c), l_of.get(c)
        out.append(
            Fused(
                c,
                float(score[p]),
                None if dr is None else dr + 1,
                None if dr is None else float(dense.scores[dr]),
                None if lr is None else lr + 1,
                None if lr is None else float(lexical.scores[lr]),
            )
        )
    return out
