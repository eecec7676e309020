"""The Backend contract over both implementations (torch_backend.py, faiss_backend.py), through make_backend: recall
parity with raw faiss, filters inside the search, ids and removal, padding, state round trip, the default per
device. Results are in the internal convention (smaller is better, +inf / -1 padding)."""

import numpy as np
import pytest
import torch

from retrieval.backend import default_backend, make_backend, resolve_backend
from tests.retrieval.helpers import clustered, ground_truth, recall

faiss = pytest.importorskip("faiss")

BACKENDS = ["torch", "faiss"]
D = 32


@pytest.fixture(scope="module")
def data():
    xb, xq = clustered(5000, D, seed=0), clustered(200, D, seed=1)
    return xb, xq


def search(b, xq, k, nprobe=4, allowed=None):
    return b.search(torch.from_numpy(xq).to(b.device), k, nprobe, allowed)


def trained(kind, backend, metric, x, nlist=32, m=8, nbits=6, ids=None):
    b = make_backend(kind, x.shape[1], metric, m, nbits, nlist if kind == "ivfpq" else 0, backend=backend)
    xt = torch.from_numpy(x).to(b.device)
    b.train(xt)
    b.add(xt, np.arange(len(x)) if ids is None else ids)
    return b


_built = {}


def built(kind, backend, metric, data):
    """Trained + filled backend over the shared data (cached: tests below do not mutate it); nbits=6 keeps k-means
    cheap."""
    key = (kind, backend, metric)
    if key not in _built:
        _built[key] = trained(kind, backend, metric, data[0])
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
    _, I = search(built(kind, "torch", metric, data), xq, 10)
    _, If = raw_faiss(kind, metric, data).search(xq, 10)
    ours, theirs = recall(I, G), recall(If, G)
    assert ours >= theirs - 0.03, (ours, theirs)
    assert ours > 0.3  # not trivially low either


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["pq", "ivfpq"])
def test_filter_returns_k_allowed(data, backend, kind):
    xb, xq = data
    b = built(kind, backend, "l2", data)
    rng = np.random.default_rng(3)
    for n_allowed in (5000, 300, 12):  # broad, selective (IVF fallback), tiny
        allowed = np.sort(rng.choice(len(xb), n_allowed, replace=False))
        _, I = search(b, xq[:20], 10, allowed=allowed)
        assert (I >= 0).all(), n_allowed
        assert np.isin(I, allowed).all()
    _, I = search(b, xq[:5], 10, allowed=np.array([7, 8, 9]))  # fewer allowed than k
    assert (np.sort(I[:, :3], 1) == [7, 8, 9]).all() and (I[:, 3:] == -1).all()


def test_filter_far_from_query_uses_fallback(data):
    # allowed vectors all sit in lists the query does not probe: results must still come back
    xb, xq = data
    for backend in BACKENDS:
        b = built("ivfpq", backend, "l2", data)
        far = np.sort(np.argsort(((xb - xq[0]) ** 2).sum(1))[-50:])
        _, I = search(b, xq[:1], 10, nprobe=1, allowed=far)
        assert (I >= 0).all() and np.isin(I, far).all(), backend


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["pq", "ivfpq"])
def test_ids_remove_and_padding(backend, kind):
    x = clustered(1200, 16, k=8, seed=5)
    ids = 1000 + 7 * np.arange(len(x))
    b = trained(kind, backend, "l2", x, nlist=4, m=4, nbits=4, ids=ids)
    # raw PQ codes (no re-ranking here: VectorIndex's test checks each vector finds itself first)
    _, I = search(b, x[:20], 10)
    assert np.isin(I, ids).all() and (I[:, 0] == ids[:20]).mean() > 0.2  # results are external ids
    b.remove(ids[:10])
    _, I = search(b, x[:20], 10)
    assert not np.isin(I, ids[:10]).any() and (I >= 0).all()
    small = trained(kind, backend, "l2", x, nlist=4, m=4, nbits=4)
    small.remove(np.arange(3, len(x)))
    dist, I = search(small, x[:2], 5)
    assert (I[:, 3:] == -1).all() and np.isinf(dist[:, 3:]).all() and (I[:, :3] >= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_roundtrip(backend, data):
    _, xq = data
    b = built("ivfpq", backend, "ip", data)
    other = make_backend("ivfpq", D, "ip", 8, 6, 32, backend=backend)
    other.load_state_dict(b.state_dict())
    assert other.is_trained and other.nlist == b.nlist == 32 and other.name == backend
    np.testing.assert_array_equal(search(other, xq[:10], 5)[1], search(b, xq[:10], 5)[1])


def test_bad_inputs(data):
    xb, _ = data
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("annoy", "cpu")
    with pytest.raises(ValueError, match="must divide"):
        make_backend("ivfpq", D, "l2", 5, 8, 8, backend="torch")
    b = make_backend("pq", D, "ip", 8, 4, backend="torch")
    assert not b.is_trained
    with pytest.raises(ValueError, match="needs at least 16"):
        b.train(torch.from_numpy(xb[:10]))
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="nlist=64 needs at least 64"):
            make_backend("ivfpq", D, "ip", 8, 4, 64, backend=backend).train(torch.from_numpy(xb[:40]))


def test_default_backend_per_device():
    assert default_backend("cpu") == "faiss"
    assert default_backend("cuda") == "torch"
    assert resolve_backend(None, "cpu") == "faiss" and resolve_backend("torch", "cpu") == "torch"
    assert make_backend("pq", D, "ip", 8, 4, device="cpu").name == "faiss"
