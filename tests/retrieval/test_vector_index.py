"""VectorIndex: exact search until trained, then PQ / IVF-PQ candidates re-ranked from the one float16 store;
training off the owner's lock (training_job / tune / install); snapshots and crash recovery of its directory. Both
backends where the results depend on them."""

import json
import os

import numpy as np
import pytest

from common.errors import InvalidArgumentError
from retrieval import snapshot
from retrieval.vector_index import IndexConfig, VectorIndex
from retrieval.vectors import FLT_MAX
from tests.retrieval.helpers import clustered, ground_truth, recall

faiss = pytest.importorskip("faiss")

D = 32


def vectors(n, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(42).standard_normal((30, D)).astype(np.float32)
    x = centers[rng.integers(0, 30, n)] + 0.5 * rng.standard_normal((n, D)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_ids(xb, ids, xq, k):
    return ids[np.argsort(-(xq @ xb.T), axis=1, kind="stable")[:, :k]]


def small_config(**kw):
    # everything but the re-rank factor pinned (the tuner picks it); training is due at 624 vectors
    return IndexConfig(**{"kind": "ivfpq", "m": 8, "nbits": 4, "nlist": 8, "nprobe": 4, "min_train_size": 624, **kw})


def trained(ix):
    ix.retrain()
    assert ix.is_trained
    return ix


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_exact_then_trained_transition(backend):
    ci = VectorIndex(D, small_config(backend=backend))
    x, ids = vectors(1000), np.arange(1000) * 3 + 1
    xq = vectors(20, seed=9)
    ci.add(x[:600], ids[:600])
    assert not ci.is_trained and not ci.training_due()
    _, I = ci.search(xq, 5)
    np.testing.assert_array_equal(I, exact_ids(x[:600], ids[:600], xq, 5))  # exact while untrained
    ci.add(x[600:], ids[600:])  # crosses 624: training is due, never done inside add()
    assert ci.training_due() and not ci.is_trained
    report = ci.retrain()
    assert ci.is_trained and ci.trained_size == 1000 and ci.stats()["backend"] == backend
    assert report["met"] and report["recall"] >= 0.95 and report["params"]["nlist"] == 8
    assert not ci.training_due()
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
    ci = VectorIndex(D, small_config())
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
    import retrieval.vector_index as vector_index

    ci = VectorIndex(D, small_config(kind="flat"))
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
    assert ci.vectors.tombstones < 2200  # the compaction happened
    # a compaction followed by as many adds leaves n_rows where it was: only the layout tells the copy is stale
    other = VectorIndex(D, small_config(kind="flat"))
    x2, ids2 = vectors(2300, seed=3), np.arange(2300)
    other.add(x2[:1200], ids2[:1200])
    other.search(xq, 5)  # copies 1,200 rows
    other.remove(ids2[:1100])  # more than max(1024, n_rows // 2) tombstones: compacts to 100 rows, in memory
    other.add(x2[1200:], ids2[1200:])  # other vectors, 1,200 rows again
    assert other.vectors.n_rows == 1200 and other.vectors.tombstones == 0
    _, I = other.search(xq, 5)
    np.testing.assert_array_equal(I, exact_ids(x2[1100:], ids2[1100:], xq, 5))
    cached = ci._exact_rows()
    assert cached is ci._exact_rows()  # reused while nothing changes
    # above the cache limit: the float16 rows are streamed, with the same results
    monkeypatch.setattr(vector_index, "EXACT_CACHE_BYTES", 0)
    _, I2 = ci.search(xq, 5)
    np.testing.assert_array_equal(I2, exact_ids(x[np.searchsorted(ids, live)], live, xq, 5))


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_save_load_roundtrip_and_crash_recovery(tmp_path, backend):
    path = tmp_path / "col"
    ci = VectorIndex(D, small_config(backend=backend), path=path)
    x, ids = vectors(900), np.arange(900) + 10
    xq = vectors(10, seed=3)
    ci.add(x, ids)
    params, tuning = trained(ci).params, ci.tuning
    ci.remove(ids[:5])
    ci.save(last_seq=17)
    D1, I1 = ci.search(xq, 10)
    # after the snapshot: more rows and removals that a crash will lose
    ci.add(vectors(50, seed=5), np.arange(5000, 5050))
    ci.remove(ids[5:100])
    del ci  # "crash": nothing else saved
    back = VectorIndex.load(path)
    assert back.last_seq == 17 and back.ntotal == 895 and back.is_trained
    assert back.params == params and back.tuning == tuning and back.trained_size == 900
    D2, I2 = back.search(xq, 10)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_allclose(D1, D2, rtol=1e-5)
    # the owner replays newer rows; the index keeps working in its directory and saves again
    back.add(vectors(50, seed=5), np.arange(5000, 5050))
    back.save(last_seq=18)
    again = VectorIndex.load(path)
    assert again.last_seq == 18 and again.ntotal == 945
    np.testing.assert_allclose(again.get([5000]), vectors(50, seed=5)[:1], atol=2e-3)


def test_compaction_on_save_and_copy_to_other_dir(tmp_path):
    path = tmp_path / "col"
    ci = VectorIndex(D, small_config(backend="torch"), path=path)
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
    cp = VectorIndex.load(tmp_path / "copy")
    assert cp.ntotal == 1000 and cp.last_seq == 3
    np.testing.assert_array_equal(cp.search(x[2500:2510], 5)[1], ci.search(x[2500:2510], 5)[1])
    mem = VectorIndex(D, small_config())  # in memory: save needs a path
    mem.add(x[:10], ids[:10])
    with pytest.raises(ValueError, match="no directory"):
        mem.save()
    mem.save(tmp_path / "mem", last_seq=4)
    assert VectorIndex.load(tmp_path / "mem").ntotal == 10
    with pytest.raises(ValueError, match="already holds an index"):
        VectorIndex(D, small_config(), path=tmp_path / "mem")


def test_retrain_and_growth():
    ci = VectorIndex(D, small_config(backend="torch", retrain_growth=2.0))
    ci.add(vectors(300), np.arange(300))
    assert not ci.training_due()
    ci.retrain()  # forced below the automatic threshold
    assert ci.is_trained and ci.trained_size == 300
    ci.add(vectors(299, seed=1), np.arange(300, 599))
    assert not ci.training_due()
    ci.add(vectors(1, seed=2), [599])  # 600 >= 2 * 300
    assert ci.training_due()
    ci.retrain()
    assert ci.trained_size == 600 and not ci.training_due()
    few = VectorIndex(D, small_config())
    few.add(vectors(5), np.arange(5))
    with pytest.raises(ValueError, match="too few vectors"):
        few.retrain()


def test_training_off_the_lock_catches_up_with_changes():
    """training_job() takes the rows as they are; vectors added and removed while tune() runs reach the installed
    backend (install), so a background training loses nothing."""
    ci = VectorIndex(D, small_config(backend="faiss"))
    x, ids = vectors(1500), np.arange(1500)
    ci.add(x[:1000], ids[:1000])
    job = ci.training_job()
    tuned = job.tune(ci.config)
    ci.add(x[1000:], ids[1000:])  # meanwhile
    ci.remove(ids[:100])
    assert not ci.is_trained  # still exact until install
    assert ci.install(job, tuned) and ci.is_trained and ci.trained_size == 1000
    xq = vectors(30, seed=8)
    live = ids[100:]
    G = exact_ids(x[100:], live, xq, 10)
    _, I = ci.search(xq, 10)
    assert recall(I, G) >= 0.9 and not np.isin(I, ids[:100]).any()
    assert ci.vectors.ntotal == 1400 and sorted(ci.ids()) == live.tolist()
    _, I = ci.search(x[1400:1410], 10)
    assert (I == ids[1400:1410, None]).any(1).all()  # added during the training, found through the new backend


def test_a_tuning_that_finds_nothing_leaves_the_index_exact_until_it_doubles():
    ci = VectorIndex(D, small_config(recall_target=1.0, rerank=False))  # no re-ranking: recall 1.0 is out of reach
    x = vectors(2000)
    ci.add(x[:700], np.arange(700))
    assert ci.training_due()
    job = ci.training_job()
    tuned = job.tune(ci.config)
    assert tuned.backend is None and not tuned.report["met"] and "no setting met" in tuned.report["reason"]
    assert not ci.install(job, tuned) and not ci.is_trained and ci.tuning == tuned.report
    ci.add(x[700:1399], np.arange(700, 1399))
    assert not ci.training_due()  # the next attempt waits until the index doubled
    ci.add(x[1399:1400], [1399])
    assert ci.training_due()


def test_pq_and_flat_kinds():
    x, ids = vectors(700), np.arange(700)
    flat = VectorIndex(D, IndexConfig(kind="flat"))
    flat.add(x, ids)
    assert not flat.is_trained
    pq = VectorIndex(D, IndexConfig(kind="pq", m=8, nbits=4, backend="torch"))
    pq.add(x, ids)
    assert pq.training_due() and not flat.training_due()
    trained(pq)
    assert pq.stats()["params"]["nlist"] == 0 and pq.nprobe is None and flat.retrain() == {}
    xq = vectors(100, seed=4)
    G = flat.search(xq, 10)[1]
    # the held-out estimate met the target (minus its standard error); fresh queries land near it
    assert pq.tuning["recall"] - pq.tuning["recall_stderr"] >= 0.95
    assert recall(pq.search(xq, 10)[1], G) >= 0.9


def test_config_defaults_and_validation():
    c = IndexConfig()
    assert (c.kind, c.m, c.nbits, c.nlist, c.nprobe, c.rerank_factor) == (None,) * 6  # chosen by measurement
    assert c.recall_target == 0.95 and c.min_train_size == 512 and c.retrain_growth == 4.0
    ci = VectorIndex(384)
    assert ci.stats()["kind"] == "exact" and ci.stats()["params"] is None
    # a configuration is checked where it enters (Collections.create), with a message saying what to fix
    with pytest.raises(ValueError, match="must divide d=384"):
        IndexConfig(m=50).validate(384)
    with pytest.raises(InvalidArgumentError, match="kind"):
        IndexConfig(kind="hnsw").validate(D)
    with pytest.raises(InvalidArgumentError, match="nprobe"):
        IndexConfig(nprobe=0).validate(D)
    with pytest.raises(InvalidArgumentError, match="nlist"):
        IndexConfig(nlist=True).validate(D)
    for bad in (0.0, 1.5, True, "high"):
        with pytest.raises(InvalidArgumentError, match="recall_target"):
            IndexConfig(recall_target=bad).validate(D)
    with pytest.raises(ValueError, match="nbits"):
        IndexConfig(nbits=9).validate(D)
    with pytest.raises(ValueError, match="backend"):
        IndexConfig(backend="annoy").validate(D)
    with pytest.raises(ValueError, match="metric"):
        IndexConfig(metric="cosine").validate(D)
    IndexConfig(kind="pq", m=8, nbits=6).validate(D)
    with pytest.raises(ValueError, match="query has dimension 512 but the index has 384"):
        ci.search(np.zeros((1, 512), np.float32), 5)
    with pytest.raises(ValueError, match="ids already"):
        ci.add(np.zeros((1, 384), np.float32), [1])
        ci.add(np.zeros((1, 384), np.float32), [1])
    with pytest.raises(ValueError, match="got 2 ids for 1 vectors"):
        ci.add(np.zeros((1, 384), np.float32), [5, 6])
    with pytest.raises(AssertionError):  # last_seq comes from the store, never from a user
        ci.save("/nonexistent-never-created", last_seq="x")
    with pytest.raises(ValueError, match="no index snapshot"):
        VectorIndex.load("/nonexistent-dir-for-test")
    cfg = IndexConfig(kind="pq", m=8, nbits=6, rerank_factor=4)
    assert IndexConfig.from_dict(cfg.to_dict()) == cfg
    # a configuration stored before self-tuning held the old defaults explicitly: they become "tuned"
    old = {"kind": "ivfpq", "m": None, "nbits": 8, "nlist": None, "nprobe": None, "rerank_factor": 8, "metric": "ip"}
    assert IndexConfig.from_dict(old) == IndexConfig()
    assert IndexConfig.from_dict({**old, "nbits": 6, "kind": "pq"}) == IndexConfig(kind="pq", nbits=6)


def test_snapshots_of_the_previous_format_are_refused(tmp_path):
    """A format-1 snapshot (parameters from the config, no tuning report) is refused: the owner rebuilds the index
    from the store (recovery.restore)."""
    ix = VectorIndex(D, small_config(), path=tmp_path / "ix")
    ix.add(vectors(10), np.arange(10))
    ix.save(last_seq=1)
    meta, arrays = snapshot.read(tmp_path / "ix")
    record = np.frombuffer(json.dumps({**meta, "format": 1}).encode(), dtype=np.uint8)
    np.savez(tmp_path / "ix" / snapshot.SNAPSHOT, meta=record, **arrays)
    with pytest.raises(ValueError, match="unsupported index snapshot format 1"):
        VectorIndex.load(tmp_path / "ix")


# --- results over both backends: re-ranking, ids and padding, the memory-mapped store, bad inputs -------------


@pytest.fixture(scope="module")
def data():
    return clustered(5000, D, seed=0), clustered(200, D, seed=1)


_built = {}


def built_ivfpq(backend, metric, data):
    """A trained IVF-PQ index over the shared data (cached: the tests below do not mutate it); nbits=6 keeps
    k-means cheap; every parameter is pinned, so the tuner only measures it."""
    key = (backend, metric)
    if key not in _built:
        cfg = IndexConfig(
            kind="ivfpq", metric=metric, m=8, nbits=6, nlist=32, nprobe=4, backend=backend, rerank_factor=4
        )
        ix = VectorIndex(D, cfg)
        ix.add(data[0], np.arange(len(data[0])))
        assert ix.training_due()
        trained(ix)
        assert ix.trained_size == 5000
        _built[key] = ix
    return _built[key]


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_rerank_gives_exact_order_and_scores(data, backend, metric):
    xb, xq = data
    G = ground_truth(xb, xq, 10, metric)
    idx = built_ivfpq(backend, metric, data)
    Dr, Ir = idx.search(xq, 10, nprobe=16)
    Dn, In = idx.search(xq, 10, nprobe=16, rerank=False)
    assert recall(Ir, G) >= max(0.9, recall(In, G))
    # re-ranked scores are exact (float16 vectors): recompute them
    v = xb[Ir]
    want = np.einsum("qkd,qd->qk", v, xq) if metric == "ip" else ((v - xq[:, None]) ** 2).sum(-1)
    np.testing.assert_allclose(Dr, want, rtol=2e-2, atol=2e-2)
    order = np.diff(Dr, axis=1)
    assert (order <= 1e-6).all() if metric == "ip" else (order >= -1e-6).all()


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("kind", ["flat", "pq", "ivfpq"])
def test_ids_remove_and_padding(backend, kind):
    x = clustered(1200, 16, k=8, seed=5)
    cfg = IndexConfig(kind=kind, metric="l2", m=4, nbits=4, nlist=4 if kind == "ivfpq" else None, nprobe=4)
    idx = VectorIndex(16, dataclass_replace(cfg, backend=backend))
    ids = 1000 + 7 * np.arange(len(x))
    idx.add(x, ids)
    if kind != "flat":
        trained(idx)
    assert idx.ntotal == len(x) and idx.is_trained == (kind != "flat")
    _, I = idx.search(x[:20], 3)
    assert (I[:, 0] == ids[:20]).all()  # each vector finds itself, under its own id
    assert idx.remove(np.concatenate([ids[:10], [5, 6]])) == 10  # unknown ids ignored
    assert idx.ntotal == len(x) - 10
    _, I = idx.search(x[:20], 3)
    assert not np.isin(I, ids[:10]).any()
    assert (I[10:, 0] == ids[10:20]).all()
    new = idx.add(x[:2])  # default ids continue after the largest one
    assert (new == [ids.max() + 1, ids.max() + 2]).all()
    # fewer vectors than k: padded like faiss (id -1, D = FLT_MAX for l2), trained or not
    idx.remove(idx.ids()[3:])
    D_, I = idx.search(x[:2], 5)
    assert idx.ntotal == 3 and (I[:, 3:] == -1).all() and (D_[:, 3:] == FLT_MAX).all()


def dataclass_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_memory_mapped_vector_store(tmp_path):
    x = clustered(700, 16, k=4, seed=7)
    idx = VectorIndex(16, IndexConfig(kind="pq", m=4, nbits=4, backend="torch"), path=tmp_path / "ix")
    idx.add(x, np.arange(700))
    trained(idx)
    assert (tmp_path / "ix" / "vectors.0.f16").stat().st_size >= 700 * 16 * 2
    np.testing.assert_allclose(idx.get([0, 5]), x[[0, 5]], atol=1e-2)


def test_bad_inputs(data):
    xb, _ = data
    idx = VectorIndex(D, IndexConfig(kind="pq", m=8, nbits=4, backend="torch"))
    with pytest.raises(ValueError, match="too few vectors"):
        idx.add(xb[:10], np.arange(10))
        idx.retrain()
    with pytest.raises(ValueError, match="vectors has dimension 16 but the index has 32"):
        idx.add(xb[:5, :16], np.arange(5))
    idx.add(xb[:5], [11, 12, 13, 14, 15])
    with pytest.raises(ValueError, match="already in the index"):
        idx.add(xb[:1], [13])
    with pytest.raises(ValueError, match="duplicates"):
        idx.add(xb[:2], [19, 19])
    with pytest.raises(ValueError, match="query has dimension 512 but the index has 32"):
        idx.search(np.zeros((1, 512), np.float32), 3)
    with pytest.raises(AssertionError):  # k was checked where the search entered (Collection.search)
        idx.search(xb[:1], 0)
    with pytest.raises(ValueError, match="allowed ids must be integers"):
        idx.search(xb[:1], 3, allowed=np.array([0.5]))


def test_unsaved_counts_changes_since_the_last_save(tmp_path):
    ix = VectorIndex(D, small_config(kind="flat"), path=tmp_path / "ix")
    x = vectors(10)
    ix.add(x, np.arange(10))
    ix.remove([1, 2, 99])  # 99 is unknown: not a change
    assert ix.unsaved == 12
    ix.save(tmp_path / "elsewhere")  # a copy elsewhere leaves this directory unsaved
    assert ix.unsaved == 12
    ix.save(last_seq=3)
    assert ix.unsaved == 0 and VectorIndex.load(tmp_path / "ix").unsaved == 0
