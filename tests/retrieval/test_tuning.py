"""The tuner: candidate settings from the config's pins and the data's size, the cost model, a chosen setting that
meets the target on held-out vectors and on fresh queries, the cheapest among the qualifying ones, ties, force, and
cancellation. Real backends (faiss and torch) on clustered vectors."""

import numpy as np
import pytest
import torch

from retrieval.index_config import IndexConfig
from retrieval.tuning import MIN_SPEEDUP, Setting, TrainingCancelled, query_cost, settings, tune
from tests.retrieval.helpers import clustered, ground_truth, recall

D = 32


def data(n, seed=0):
    x = clustered(n, D, k=32, seed=seed)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_settings_follow_the_pins_and_the_data():
    free = settings(IndexConfig(), 20000, 384)
    assert {s.m for s in free} == {24, 48, 96} and {s.nbits for s in free} == {4, 6, 8}
    assert {s.kind for s in free} == {"pq", "ivfpq"} and {s.nlist for s in free if s.kind == "ivfpq"} == {283}
    assert all(s.nlist == 0 for s in free if s.kind == "pq")
    small = settings(IndexConfig(), 300, 384)  # 300 vectors: no 8-bit codebooks (4 * 256 > 300), no IVF
    assert {s.nbits for s in small} == {4, 6} and {s.kind for s in small} == {"pq"}
    pinned = settings(IndexConfig(kind="ivfpq", m=8, nbits=6, nlist=16), 1000, D)
    assert pinned == [Setting("ivfpq", 8, 6, 16)]
    assert settings(IndexConfig(nbits=8), 100, D) == []  # too few vectors for 256 centroids


def test_cost_model():
    pq, ivf = Setting("pq", 24, 4, 0), Setting("ivfpq", 24, 4, 256)
    n, d = 100_000, 384
    assert query_cost(pq, 0, 8, True, n, d) == d * 16 + 24 * n + 8 * 10 * d
    assert query_cost(ivf, 8, 8, True, n, d) < query_cost(pq, 0, 8, True, n, d)  # IVF scans 8 of 256 lists
    assert query_cost(ivf, 16, 8, True, n, d) > query_cost(ivf, 8, 8, True, n, d)
    assert query_cost(pq, 0, 8, False, n, d) < query_cost(pq, 0, 8, True, n, d)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_the_chosen_setting_meets_the_target(backend):
    x = data(3000)
    ids = np.arange(3000) * 2 + 5
    tuned = tune(x, ids, IndexConfig(backend=backend, recall_target=0.95))
    r = tuned.report
    assert r["met"] and r["recall"] - r["recall_stderr"] >= 0.95 and r["queries"] == 256 and r["vectors"] == 3000
    assert r["cost"] * MIN_SPEEDUP <= r["exact_cost"] and r["params"] == tuned.params.to_dict()
    assert r["settings_trained"] >= 1 and r["bytes_per_vector"] < 4 * D and r["backend"] == backend
    # the backend holds every vector under its id, the held-out queries included
    _, got = tuned.backend.search(torch.from_numpy(x[:1]), 3000, max(1, tuned.params.nlist), None)
    assert sorted(got[0].tolist()) == ids.tolist()


def test_search_recall_on_fresh_queries():
    """Through VectorIndex: the tuned index answers fresh queries near the measured recall."""
    from retrieval.vector_index import VectorIndex

    x, xq = data(4000), data(300, seed=11)
    ix = VectorIndex(D, IndexConfig())
    ix.add(x)
    report = ix.retrain()
    G = ground_truth(x, xq, 10, "ip")
    assert report["met"] and recall(ix.search(xq, 10)[1], G) >= 0.93


def test_a_lower_target_picks_a_cheaper_setting():
    x = data(3000)
    strict = tune(x, np.arange(3000), IndexConfig(recall_target=0.99)).report
    loose = tune(x, np.arange(3000), IndexConfig(recall_target=0.7)).report
    assert loose["met"] and strict["met"] and loose["cost"] < strict["cost"]


def test_ties_are_not_misses():
    """Every vector twice: each query's 10 nearest hold 5 pairs of equal distances, so an index returning either
    copy is exact. Counting by id would halve the recall; counting by distance does not."""
    x = data(1500)
    tuned = tune(np.concatenate([x, x]), np.arange(3000), IndexConfig(recall_target=0.9))
    assert tuned.report["met"] and tuned.report["recall"] >= 0.9


def test_an_unreachable_target_and_force():
    x = data(1000)
    config = IndexConfig(kind="pq", m=2, nbits=4, rerank=False, recall_target=0.99)  # 2 x 4-bit codes, no re-rank
    auto = tune(x, np.arange(1000), config)
    assert auto.backend is None and auto.params is None and not auto.report["met"]
    assert "no setting met recall@10 0.99" in auto.report["reason"] and auto.report["recall"] < 0.99
    forced = tune(x, np.arange(1000), config, force=True)
    assert forced.backend is not None and not forced.report["met"]
    assert forced.report["recall"] == auto.report["recall"]  # the best one measured


def test_too_few_vectors():
    tuned = tune(data(40), np.arange(40), IndexConfig(nbits=8))
    assert tuned.backend is None and "too few vectors" in tuned.report["reason"]


def test_cancellation():
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(TrainingCancelled):
        tune(data(2000), np.arange(2000), IndexConfig(recall_target=1.0), cancelled=cancelled)
