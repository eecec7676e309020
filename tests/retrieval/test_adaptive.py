import os

import numpy as np
import pytest

from retrieval.adaptive import CollectionIndex, IndexConfig, auto_nlist

faiss = pytest.importorskip("faiss")

D = 32


def vectors(n, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(42).standard_normal((30, D)).astype(np.float32)
    x = centers[rng.integers(0, 30, n)] + 0.5 * rng.standard_normal((n, D)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_ids(xb, ids, xq, k):
    return ids[np.argsort(-(xq @ xb.T), axis=1, kind="stable")[:, :k]]


def recall(I, G):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(I, G)]))


def small_config(**kw):
    # nbits=4: 16 centroids per sub-space, so training starts at 39 * 16 = 624 vectors
    return IndexConfig(**{"kind": "ivfpq", "m": 8, "nbits": 4, "nlist": 8, "nprobe": 4, **kw})


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_exact_then_trained_transition(backend):
    ci = CollectionIndex(D, small_config(backend=backend))
    assert ci.min_train_size == 624
    x, ids = vectors(1000), np.arange(1000) * 3 + 1
    xq = vectors(20, seed=9)
    ci.add(x[:600], ids[:600])
    assert not ci.is_trained
    _, I = ci.search(xq, 5)
    np.testing.assert_array_equal(I, exact_ids(x[:600], ids[:600], xq, 5))  # exact while untrained
    ci.add(x[600:], ids[600:])  # crosses 624: trains itself
    assert ci.is_trained and ci.trained_size == 1000 and ci.stats()["backend"] == backend
    G = exact_ids(x, ids, xq, 10)
    _, I = ci.search(xq, 10)
    assert recall(I, G) >= 0.95  # PQ candidates + exact float16 re-ranking
    _, In = ci.search(xq, 10, rerank=False)
    assert recall(In, G) <= recall(I, G)
    allowed = ids[::50]
    _, I = ci.search(xq, 10, allowed=allowed)
    assert np.isin(I, allowed).all() and (I >= 0).all()
    assert ci.remove(ids[:500]) == 500
    _, I = ci.search(xq, 10)
    assert not np.isin(I, ids[:500]).any()


def test_untrained_filter_and_remove():
    ci = CollectionIndex(D, small_config())
    x, ids = vectors(100), np.arange(100)
    Dp, I = ci.search(x[:2], 3)  # empty: all padding, like faiss
    assert (I == -1).all() and (Dp == -np.finfo(np.float32).max).all()
    ci.add(x, ids)
    ci.remove([3, 4])
    _, I = ci.search(x[3:5], 3)
    assert not np.isin(I, [3, 4]).any()
    _, I = ci.search(x[:2], 4, allowed=[10, 11, 3])
    assert set(I[0][:2]) == {10, 11} and (I[:, 2:] == -1).all()


def test_exact_search_cache_follows_adds_removes_and_compaction(monkeypatch):
    import retrieval.adaptive as adaptive

    ci = CollectionIndex(D, small_config(kind="flat"))
    x, ids = vectors(3000), np.arange(3000) * 7
    xq = vectors(10, seed=5)
    live = np.zeros(0, np.int64)
    rng = np.random.default_rng(0)
    for step in range(6):  # searches between every change: a stale float32 copy would return wrong ids
        new = ids[step * 500 : (step + 1) * 500]
        ci.add(x[step * 500 : (step + 1) * 500], new)
        live = np.concatenate([live, new])
        gone = rng.choice(live, 2200 if step == 4 else 40, replace=False)  # step 4: compacts (in memory)
        ci.remove(gone)
        live = np.setdiff1d(live, gone)
        _, I = ci.search(xq, 5)
        xb = x[np.searchsorted(ids, live)]
        np.testing.assert_array_equal(I, exact_ids(xb, live, xq, 5))
    assert ci.store.tombstones < 2200  # the compaction happened
    # a compaction followed by as many adds leaves n_rows where it was: only the layout tells the copy is stale
    other = CollectionIndex(D, small_config(kind="flat"))
    x2, ids2 = vectors(2300, seed=3), np.arange(2300)
    other.add(x2[:1200], ids2[:1200])
    other.search(xq, 5)  # copies 1,200 rows
    other.remove(ids2[:1100])  # more than max(1024, n_rows // 2) tombstones: compacts to 100 rows, in memory
    other.add(x2[1200:], ids2[1200:])  # other vectors, 1,200 rows again
    assert other.store.n_rows == 1200 and other.store.tombstones == 0
    _, I = other.search(xq, 5)
    np.testing.assert_array_equal(I, exact_ids(x2[1100:], ids2[1100:], xq, 5))
    cached = ci._exact_rows()
    assert cached is ci._exact_rows()  # reused while nothing changes
    # above the cache limit: the float16 rows are streamed, with the same results
    monkeypatch.setattr(adaptive, "EXACT_CACHE_BYTES", 0)
    _, I2 = ci.search(xq, 5)
    np.testing.assert_array_equal(I2, exact_ids(x[np.searchsorted(ids, live)], live, xq, 5))


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_save_load_roundtrip_and_crash_recovery(tmp_path, backend):
    path = tmp_path / "col"
    ci = CollectionIndex(D, small_config(backend=backend), path=path)
    x, ids = vectors(900), np.arange(900) + 10
    xq = vectors(10, seed=3)
    ci.add(x, ids)
    ci.remove(ids[:5])
    ci.save(last_seq=17)
    D1, I1 = ci.search(xq, 10)
    # after the snapshot: more rows and removals that a crash will lose
    ci.add(vectors(50, seed=5), np.arange(5000, 5050))
    ci.remove(ids[5:100])
    del ci  # "crash": nothing else saved
    back = CollectionIndex.load(path)
    assert back.last_seq == 17 and back.ntotal == 895 and back.is_trained
    D2, I2 = back.search(xq, 10)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_allclose(D1, D2, rtol=1e-5)
    # the owner replays newer rows; the index keeps working in its directory and saves again
    back.add(vectors(50, seed=5), np.arange(5000, 5050))
    back.save(last_seq=18)
    again = CollectionIndex.load(path)
    assert again.last_seq == 18 and again.ntotal == 945
    np.testing.assert_allclose(again.get([5000]), vectors(50, seed=5)[:1], atol=2e-3)


def test_compaction_on_save_and_copy_to_other_dir(tmp_path):
    path = tmp_path / "col"
    ci = CollectionIndex(D, small_config(backend="torch"), path=path)
    x, ids = vectors(3000), np.arange(3000)
    ci.add(x, ids)
    ci.save(last_seq=1)
    ci.remove(ids[:2000])  # many tombstones: the next save writes a new vector generation
    ci.save(last_seq=2)
    files = sorted(f for f in os.listdir(path) if f.endswith(".f16"))
    assert files == ["vectors.1.f16"]
    assert os.path.getsize(path / "vectors.1.f16") >= 1000 * D * 2
    assert not any(f.endswith(".tmp") for f in os.listdir(path))
    ci.save(tmp_path / "copy", last_seq=3)  # a copy elsewhere, compacted
    cp = CollectionIndex.load(tmp_path / "copy")
    assert cp.ntotal == 1000 and cp.last_seq == 3
    np.testing.assert_array_equal(cp.search(x[2500:2510], 5)[1], ci.search(x[2500:2510], 5)[1])
    mem = CollectionIndex(D, small_config())  # in memory: save needs a path
    mem.add(x[:10], ids[:10])
    with pytest.raises(ValueError, match="no directory"):
        mem.save()
    mem.save(tmp_path / "mem", last_seq=4)
    assert CollectionIndex.load(tmp_path / "mem").ntotal == 10
    with pytest.raises(ValueError, match="already holds an index"):
        CollectionIndex(D, small_config(), path=tmp_path / "mem")


def test_retrain_and_growth():
    ci = CollectionIndex(D, small_config(backend="torch", retrain_growth=2.0))
    ci.add(vectors(300), np.arange(300))
    ci.retrain()  # forced below the automatic threshold
    assert ci.is_trained and ci.trained_size == 300
    ci.add(vectors(300, seed=1), np.arange(300, 600))  # 600 >= 2 * 300: retrains itself
    assert ci.trained_size == 600
    few = CollectionIndex(D, small_config())
    few.add(vectors(5), np.arange(5))
    with pytest.raises(ValueError, match="needs at least 16"):
        few.retrain()


def test_pq_and_flat_kinds():
    x, ids = vectors(700), np.arange(700)
    flat = CollectionIndex(D, IndexConfig(kind="flat"))
    flat.add(x, ids)
    assert not flat.is_trained and flat.min_train_size is None
    pq = CollectionIndex(D, IndexConfig(kind="pq", m=8, nbits=4, backend="torch"))
    pq.add(x, ids)
    assert pq.is_trained and pq.stats()["nlist"] is None
    xq = vectors(10, seed=4)
    G = flat.search(xq, 10)[1]
    assert recall(pq.search(xq, 10)[1], G) >= 0.95


def test_config_defaults_and_validation():
    assert IndexConfig().resolved_m(384) == 48
    assert IndexConfig().resolved_m(100) in (10, 20)  # no d // 8: a divisor close to it
    assert auto_nlist(10000) == 256 and auto_nlist(1_000_000) == 4000
    ci = CollectionIndex(384)
    assert ci.min_train_size == 39 * 256 and ci.m == 48
    with pytest.raises(ValueError, match="must divide d=384"):
        CollectionIndex(384, IndexConfig(m=50))
    with pytest.raises(ValueError, match="kind"):
        CollectionIndex(D, IndexConfig(kind="hnsw"))
    with pytest.raises(ValueError, match="nprobe"):
        CollectionIndex(D, IndexConfig(nprobe=0))
    with pytest.raises(ValueError, match="query has dimension 512 but the index has 384"):
        ci.search(np.zeros((1, 512), np.float32), 5)
    with pytest.raises(ValueError, match="ids already"):
        ci.add(np.zeros((1, 384), np.float32), [1])
        ci.add(np.zeros((1, 384), np.float32), [1])
    with pytest.raises(ValueError, match="got 2 ids for 1 vectors"):
        ci.add(np.zeros((1, 384), np.float32), [5, 6])
    with pytest.raises(ValueError, match="last_seq"):
        ci.save("/nonexistent-never-created", last_seq="x")
    with pytest.raises(ValueError, match="no index snapshot"):
        CollectionIndex.load("/nonexistent-dir-for-test")
    cfg = IndexConfig(kind="pq", m=8, nbits=6, rerank_factor=4)
    assert IndexConfig.from_dict(cfg.to_dict()) == cfg
