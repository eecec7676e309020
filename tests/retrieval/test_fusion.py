"""Fusing a dense and a lexical ranking: reciprocal rank fusion by hand, weighted fusion of normalised scores, the
ranks and scores each hit keeps, deterministic ties, and the checks of the parameters."""

import numpy as np
import pytest

from common.errors import InvalidArgumentError
from retrieval.fusion import FusionParams, Ranked, check_fusion, check_mode, fuse, normalised, single


def ranked(ids, scores):
    return Ranked(np.array(ids, np.int64), np.array(scores, np.float64))


DENSE = ranked([10, 20, 30], [0.9, 0.8, 0.1])
LEXICAL = ranked([30, 40], [12.0, 3.0])


def test_reciprocal_rank_fusion():
    out = fuse(DENSE, LEXICAL, 10, FusionParams(rrf_k=60))
    want = {10: 1 / 61, 20: 1 / 62, 30: 1 / 63 + 1 / 61, 40: 1 / 62}
    assert [f.chunk_id for f in out] == [30, 10, 20, 40]  # 20 and 40 tie: the dense rank wins
    for f in out:
        assert f.score == pytest.approx(want[f.chunk_id])
    top = out[0]
    assert (top.dense_rank, top.dense_score, top.lexical_rank, top.lexical_score) == (3, 0.1, 1, 12.0)
    only_lexical = out[3]
    assert only_lexical.dense_rank is None and only_lexical.dense_score is None and only_lexical.lexical_rank == 2
    assert [f.chunk_id for f in fuse(DENSE, LEXICAL, 2, FusionParams(rrf_k=1))] == [30, 10]


def test_weighted_fusion_of_normalised_scores():
    dense_only = fuse(DENSE, LEXICAL, 4, FusionParams(alpha=1.0))
    assert [f.chunk_id for f in dense_only][:3] == [10, 20, 30]
    lexical_only = fuse(DENSE, LEXICAL, 4, FusionParams(alpha=0.0))
    assert lexical_only[0].chunk_id == 30 and all(f.score == 0.0 for f in lexical_only[1:])  # min-max: last is 0
    half = {f.chunk_id: f.score for f in fuse(DENSE, LEXICAL, 4, FusionParams(alpha=0.5))}
    # dense min-max: 10 -> 1, 20 -> 0.875, 30 -> 0; lexical: 30 -> 1, 40 -> 0
    assert half == pytest.approx({10: 0.5, 20: 0.4375, 30: 0.5, 40: 0.0})
    assert normalised(np.array([2.0, 2.0])).tolist() == [1.0, 1.0] and len(normalised(np.zeros(0))) == 0


def test_one_side_empty_and_single_mode():
    out = fuse(DENSE, Ranked.empty(), 2, FusionParams())  # weighted: dense alone keeps its order
    assert [f.chunk_id for f in out] == [10, 20] and all(f.lexical_rank is None for f in out)
    assert fuse(Ranked.empty(), Ranked.empty(), 5, FusionParams()) == []
    lex = single(LEXICAL, dense=False, k=1)
    assert len(lex) == 1 and (lex[0].score, lex[0].lexical_rank, lex[0].dense_rank) == (12.0, 1, None)
    d = single(DENSE, dense=True, k=5)
    assert [f.dense_rank for f in d] == [1, 2, 3] and d[0].dense_score == d[0].score == 0.9


def test_checks():
    assert check_mode(None) is None and check_mode("lexical") == "lexical"
    with pytest.raises(InvalidArgumentError, match="dense, lexical, hybrid"):
        check_mode("sparse")
    assert check_fusion() == FusionParams() and check_fusion(alpha=0) == FusionParams(alpha=0.0)
    assert FusionParams().rrf_k is None and FusionParams().alpha == 0.4  # weighted fusion unless rrf_k is set
    assert check_fusion(rrf_k=10, candidates=50) == FusionParams(rrf_k=10, candidates=50)
    for kwargs, msg in [
        ({"rrf_k": 0}, "rrf_k"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": True}, "alpha"),
        ({"alpha": "0.5"}, "alpha"),
        ({"candidates": FusionParams.MAX_CANDIDATES + 1}, "candidates"),
        ({"rrf_k": 60, "alpha": 0.5}, "not both"),
    ]:
        with pytest.raises(InvalidArgumentError, match=msg):
            check_fusion(**kwargs)
