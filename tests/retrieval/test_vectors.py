import numpy as np
import pytest
import torch

from retrieval.vectors import HalfStore, IdLookup, exact_search, rerank


def test_id_lookup_insert_lookup_delete():
    lk = IdLookup()
    rng = np.random.default_rng(0)
    keys = rng.permutation(100000)[:20000].astype(np.int64)
    for s in range(0, len(keys), 700):  # many small inserts: pending part and merges
        lk.insert(keys[s : s + 700], np.arange(s, min(s + 700, len(keys))))
    assert len(lk) == len(keys)
    probe = np.concatenate([keys[::37], [-1, 100001]])
    got = lk.lookup(probe)
    np.testing.assert_array_equal(got[:-2], np.arange(0, len(keys), 37))
    assert (got[-2:] == -1).all()
    old = lk.delete(keys[:10])
    np.testing.assert_array_equal(old, np.arange(10))
    assert (lk.lookup(keys[:10]) == -1).all() and len(lk) == len(keys) - 10
    np.testing.assert_array_equal(lk.keys(), np.sort(keys[10:]))


@pytest.mark.parametrize("on_disk", [False, True])
def test_half_store_add_remove_compact(tmp_path, on_disk):
    path = tmp_path / "v.0.f16" if on_disk else None
    st = HalfStore(8, path)
    x = np.random.default_rng(1).standard_normal((3000, 8)).astype(np.float32)
    st.add(np.arange(1500) * 2, x[:1500])
    st.add(np.arange(1500, 3000) * 2, torch.from_numpy(x[1500:]))  # grows the capacity
    assert st.ntotal == 3000
    np.testing.assert_allclose(st.get([0, 10, 5998]), x[[0, 5, 2999]], atol=2e-3)
    assert st.remove(np.array([0, 2, 7])) == 2  # 7 is unknown
    assert st.tombstones == 2 and st.ntotal == 2998
    assert (st.row_ids()[:2] == -1).all()  # rows stay, only tombstoned
    with pytest.raises(KeyError):
        st.get([0])
    st.compact(tmp_path / "v.1.f16" if on_disk else None)
    assert st.n_rows == 2998 and st.tombstones == 0
    np.testing.assert_allclose(st.get([4, 5998]), x[[2, 2999]], atol=2e-3)
    if on_disk:
        st.flush()
        again = HalfStore(8, tmp_path / "v.1.f16")
        again.restore(st.row_ids().copy())
        np.testing.assert_array_equal(again.get([4, 5998]), st.get([4, 5998]))


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_search_blocks_and_rows(metric):
    rng = np.random.default_rng(2)
    xb = rng.standard_normal((1000, 16)).astype(np.float32)
    xq = torch.from_numpy(rng.standard_normal((7, 16)).astype(np.float32))
    s = xq.numpy() @ xb.T if metric == "ip" else -((xq.numpy()[:, None] - xb[None]) ** 2).sum(-1)
    want = np.argsort(-s, 1)[:, :5]
    _, r = exact_search(xq, xb, 5, metric, block=128)
    np.testing.assert_array_equal(r.numpy(), want)
    rows = np.arange(0, 1000, 3)
    _, r = exact_search(xq, xb.astype(np.float16), 5, metric, rows=rows, block=50)
    assert np.isin(r.numpy(), rows).all()
    d, r = exact_search(xq, xb, 5, metric, rows=np.array([4, 9]))
    assert (r[:, 2:] == -1).all() and torch.isinf(d[:, 2:]).all()


def test_rerank_orders_candidates_exactly():
    rng = np.random.default_rng(3)
    st = HalfStore(8)
    xb = rng.standard_normal((50, 8)).astype(np.float32)
    st.add(np.arange(50) + 100, xb)
    q = torch.from_numpy(rng.standard_normal((2, 8)).astype(np.float32))
    cand = np.array([[100 + i for i in range(20)], [-1, 999, 105, 106, 107] + [-1] * 15])
    d, ids = rerank(st, q, cand, 4, "ip")
    s = q.numpy() @ xb[:20].T
    np.testing.assert_array_equal(ids[0], 100 + np.argsort(-s[0])[:4])
    assert set(ids[1][:3]) == {105, 106, 107} and ids[1][3] == -1  # unknown and -1 candidates dropped
