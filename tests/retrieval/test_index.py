import numpy as np
import pytest
import torch

from retrieval.index import FLT_MAX, FlatIndex, IVFPQIndex, PQIndex, default_backend
from retrieval.torch_index import adc_topk_torch

faiss = pytest.importorskip("faiss")

BACKENDS = ["torch", "faiss"]
D = 32


def clustered(n, d, k=64, seed=0, normalize=False):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).standard_normal((k, d)).astype(np.float32) * 1.5
    x = centers[rng.integers(0, k, n)] + rng.standard_normal((n, d)).astype(np.float32)
    if normalize:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def data():
    xb, xq = clustered(5000, D, seed=0), clustered(200, D, seed=1)
    return xb, xq


def ground_truth(xb, xq, k, metric):
    s = xq @ xb.T if metric == "ip" else -((xq[:, None] - xb[None]) ** 2).sum(-1)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def recall(I, G, k=10):
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(I, G)]))


_built = {}


def built(kind, backend, metric, data):
    """Trained + filled index over the shared data (cached: tests below do not mutate it).

    nbits=6 keeps k-means cheap; it keeps the float16 vectors, so pass rerank=False for raw PQ results.
    """
    key = (kind, backend, metric)
    keep_vectors = True
    if key not in _built:
        xb, _ = data
        if kind == "pq":
            idx = PQIndex(D, 8, 6, metric, backend=backend, keep_vectors=keep_vectors)
        else:
            idx = IVFPQIndex(D, 32, 8, 6, metric, backend=backend, nprobe=4, keep_vectors=keep_vectors)
        idx.train(xb)
        idx.add(xb)
        _built[key] = idx
    return _built[key]


def raw_faiss(kind, metric, data):
    xb, _ = data
    mt = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    if kind == "pq":
        idx = faiss.IndexPQ(D, 8, 6, mt)
    else:
        idx = faiss.IndexIVFPQ(faiss.IndexFlat(D, mt), D, 32, 8, 6, mt)
        idx.nprobe = 4
    idx.train(xb)
    idx.add(xb)
    return idx


@pytest.mark.parametrize("kind,metric", [("pq", "ip"), ("pq", "l2"), ("ivfpq", "l2")])
def test_torch_recall_matches_faiss(data, kind, metric):
    xb, xq = data
    G = ground_truth(xb, xq, 10, metric)
    _, I = built(kind, "torch", metric, data).search(xq, 10, rerank=False)
    _, If = raw_faiss(kind, metric, data).search(xq, 10)
    ours, theirs = recall(I, G), recall(If, G)
    assert ours >= theirs - 0.03, (ours, theirs)
    assert ours > 0.3  # not trivially low either


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_rerank_gives_exact_order_and_scores(data, backend, metric):
    xb, xq = data
    G = ground_truth(xb, xq, 10, metric)
    idx = built("ivfpq", backend, metric, data)
    Dr, Ir = idx.search(xq, 10, nprobe=16)
    Dn, In = idx.search(xq, 10, nprobe=16, rerank=False)
    assert recall(Ir, G) >= max(0.9, recall(In, G))
    # re-ranked scores are exact (float16 vectors): recompute them
    v = xb[Ir]
    want = np.einsum("qkd,qd->qk", v, xq) if metric == "ip" else ((v - xq[:, None]) ** 2).sum(-1)
    np.testing.assert_allclose(Dr, want, rtol=2e-2, atol=2e-2)
    order = np.diff(Dr, axis=1)
    assert (order <= 1e-6).all() if metric == "ip" else (order >= -1e-6).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["pq", "ivfpq"])
def test_filter_returns_k_allowed(data, backend, kind):
    xb, xq = data
    idx = built(kind, backend, "l2", data)
    rng = np.random.default_rng(3)
    for n_allowed in (5000, 300, 12):  # broad, selective (IVF fallback), tiny
        allowed = rng.choice(len(xb), n_allowed, replace=False)
        D_, I = idx.search(xq[:20], 10, allowed=allowed)
        assert (I >= 0).all(), n_allowed
        assert np.isin(I, allowed).all()
    _, I = idx.search(xq[:5], 10, allowed=np.array([7, 8, 9, 123456]))  # 3 exist
    assert (np.sort(I[:, :3], 1) == [7, 8, 9]).all() and (I[:, 3:] == -1).all()


def test_filter_far_from_query_uses_fallback(data):
    # allowed vectors all sit in lists the query does not probe: results must still come back
    xb, xq = data
    for backend in BACKENDS:
        idx = built("ivfpq", backend, "l2", data)
        far = np.argsort(((xb - xq[0]) ** 2).sum(1))[-50:]
        _, I = idx.search(xq[:1], 10, nprobe=1, allowed=far)
        assert (I >= 0).all() and np.isin(I, far).all(), backend


def test_grouped_scan_matches_flat_scan(data):
    # the per-list scan (the Triton kernel path on CUDA) must agree with the CPU candidate scan
    xb, xq = data
    for metric in ("ip", "l2"):
        idx = built("ivfpq", "torch", metric, data)
        D1, I1 = idx.search(xq, 10, rerank=False)
        idx._impl.force_grouped = True
        try:
            D2, I2 = idx.search(xq, 10, rerank=False)
        finally:
            idx._impl.force_grouped = False
        np.testing.assert_allclose(D1, D2, rtol=1e-4, atol=1e-3)
        assert recall(I1, I2) > 0.99


def test_adc_topk_torch_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    lut = torch.rand(70, 4, 16, generator=g)  # nq > qblock, n > block below
    codes = torch.randint(0, 16, (300, 4), dtype=torch.uint8, generator=g)
    v, i = adc_topk_torch(lut, codes, 5, block=64, qblock=32)
    full = lut[:, torch.arange(4)[None, :], codes.long()].sum(-1)  # (nq, n)
    want = full.topk(5, largest=False)
    torch.testing.assert_close(v, want.values)
    torch.testing.assert_close(full.gather(1, i), want.values)
    v, i = adc_topk_torch(lut[:2], codes[:3], 5)  # n < k: padding
    assert (i[:, 3:] == -1).all() and torch.isinf(v[:, 3:]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", ["flat", "pq", "ivfpq"])
def test_ids_remove_and_padding(backend, cls):
    x = clustered(1200, 16, k=8, seed=5)
    make = {
        "flat": lambda: FlatIndex(16, "l2", backend=backend),
        "pq": lambda: PQIndex(16, 4, 4, "l2", backend=backend, keep_vectors=True),
        "ivfpq": lambda: IVFPQIndex(16, 4, 4, 4, "l2", backend=backend, nprobe=4, keep_vectors=True),
    }[cls]
    idx = make()
    idx.train(x)
    ids = 1000 + 7 * np.arange(len(x))
    idx.add(x, ids)
    assert idx.ntotal == len(x)
    _, I = idx.search(x[:20], 3)
    assert (I[:, 0] == ids[:20]).all()  # each vector finds itself, under its own id
    assert idx.remove(np.concatenate([ids[:10], [5, 6]])) == 10  # unknown ids ignored
    assert idx.ntotal == len(x) - 10
    _, I = idx.search(x[:20], 3)
    assert not np.isin(I, ids[:10]).any()
    assert (I[10:, 0] == ids[10:20]).all()
    new = idx.add(x[:2])  # default ids continue after the largest one
    assert (new == [ids.max() + 1, ids.max() + 2]).all()
    small = make()
    small.train(x)
    small.add(x[:3], [1, 2, 3])
    D_, I = small.search(x[:2], 5)
    assert (I[:, 3:] == -1).all() and (D_[:, 3:] == FLT_MAX).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_roundtrip(backend, data):
    xb, xq = data
    idx = built("ivfpq", backend, "ip", data)
    other = IVFPQIndex(D, 32, 8, 6, "ip", backend=backend, nprobe=4)
    other.load_state_dict(idx.state_dict())
    assert other.ntotal == idx.ntotal
    np.testing.assert_array_equal(other.search(xq[:10], 5)[1], idx.search(xq[:10], 5, rerank=False)[1])


def test_memory_mapped_rerank_store(tmp_path):
    x = clustered(600, 16, k=4, seed=7)
    idx = PQIndex(16, 4, 4, "ip", backend="torch", vectors_path=tmp_path / "v.f16")
    idx.train(x)
    idx.add(x)
    assert (tmp_path / "v.f16").stat().st_size >= 600 * 16 * 2
    np.testing.assert_allclose(idx.reconstruct([0, 5]), x[[0, 5]], atol=1e-2)


def test_bad_inputs(data):
    xb, _ = data
    with pytest.raises(ValueError, match="backend"):
        FlatIndex(D, backend="annoy")
    with pytest.raises(ValueError, match="metric"):
        FlatIndex(D, metric="cosine")
    with pytest.raises(ValueError, match="must divide"):
        IVFPQIndex(D, 8, 5)
    idx = PQIndex(D, 8, 4, backend="torch")
    with pytest.raises(ValueError, match="trained"):
        idx.add(xb[:10])
    with pytest.raises(ValueError, match="needs at least 16"):
        idx.train(xb[:10])
    idx.train(xb[:500])
    with pytest.raises(ValueError, match="vectors has dimension 16 but the index has 32"):
        idx.add(xb[:5, :16])
    idx.add(xb[:5], [1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="already in the index"):
        idx.add(xb[:1], [3])
    with pytest.raises(ValueError, match="duplicates"):
        idx.add(xb[:2], [9, 9])
    with pytest.raises(ValueError, match="query has dimension 512 but the index has 32"):
        idx.search(np.zeros((1, 512), np.float32), 3)
    with pytest.raises(ValueError, match="k must be"):
        idx.search(xb[:1], 0)
    with pytest.raises(ValueError, match="keep_vectors"):
        idx.search(xb[:1], 3, rerank=True)
    with pytest.raises(ValueError, match="allowed ids must be integers"):
        idx.search(xb[:1], 3, allowed=np.array([0.5]))
    with pytest.raises(ValueError, match="nlist=64 needs at least 64"):
        IVFPQIndex(D, 64, 8, 4, backend="torch").train(xb[:40])


def test_default_backend_per_device():
    assert default_backend("cpu") == "faiss"
    assert default_backend("cuda") == "torch"


def test_kernel_contract_matches_torch_scan():
    kernels = pytest.importorskip("kernels")
    g = torch.Generator().manual_seed(1)
    lut = torch.randn(9, 8, 64, generator=g)
    codes = torch.randint(0, 64, (500, 8), dtype=torch.uint8, generator=g)
    v1, i1 = kernels.pq_adc_topk(lut, codes, 7)
    v2, i2 = adc_topk_torch(lut, codes, 7)
    torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-5)
    full = lut[:, torch.arange(8)[None, :], codes.long()].sum(-1)
    torch.testing.assert_close(full.gather(1, i1), v2, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_cuda_matches_cpu(data, metric):
    # on CUDA the IVF scan goes list by list through kernels.pq_adc_topk (Triton)
    xb, xq = data
    cpu = built("ivfpq", "torch", metric, data)
    gpu = IVFPQIndex(D, 32, 8, 6, metric, backend="torch", device="cuda", nprobe=4)
    gpu.load_state_dict(cpu.state_dict())
    D1, I1 = cpu.search(xq, 10, rerank=False)
    D2, I2 = gpu.search(xq, 10)
    np.testing.assert_allclose(D1, D2, rtol=1e-3, atol=1e-3)
    assert recall(I1, I2) > 0.99
    pq_cpu = built("pq", "torch", metric, data)
    pq_gpu = PQIndex(D, 8, 6, metric, backend="torch", device="cuda")
    pq_gpu.load_state_dict(pq_cpu.state_dict())
    assert recall(pq_gpu.search(xq, 10)[1], pq_cpu.search(xq, 10, rerank=False)[1]) > 0.99
