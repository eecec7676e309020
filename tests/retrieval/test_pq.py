import numpy as np
import pytest
import torch

from retrieval.pq import ProductQuantizer, as_ids, as_matrix

faiss = pytest.importorskip("faiss")


def clustered(n, d, k=50, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)).astype(np.float32) * 2
    return centers[rng.integers(0, k, n)] + rng.standard_normal((n, d)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    return clustered(8000, 32, seed=0), clustered(2000, 32, seed=1)


@pytest.fixture(scope="module")
def trained(data):
    xt, _ = data
    return ProductQuantizer(32, 8, nbits=6, device="cpu").train(xt)


def test_reconstruction_error_close_to_faiss(data, trained):
    xt, xv = data
    ours = trained.reconstruction_error(xv)  # held-out vectors
    fpq = faiss.ProductQuantizer(32, 8, 6)
    fpq.train(xt)
    theirs = float(((xv - fpq.decode(fpq.compute_codes(xv))) ** 2).sum(1).mean())
    assert ours <= theirs * 1.03, (ours, theirs)
    assert ours < 0.5 * float((xv**2).sum(1).mean())  # and far better than nothing


def test_encode_decode_shapes_and_exact_codewords(trained):
    pq = trained
    codes = np.random.default_rng(2).integers(0, pq.ksub, (50, pq.m)).astype(np.uint8)
    x = pq.decode(codes)
    assert x.shape == (50, 32) and x.dtype == np.float32
    # a vector made of codewords encodes to exactly those codewords
    np.testing.assert_array_equal(pq.encode(x), codes)
    c = pq.encode(x[:3])
    assert c.dtype == np.uint8 and c.shape == (3, pq.m)


def test_torch_and_numpy_input_agree(data, trained):
    _, xv = data
    np.testing.assert_array_equal(trained.encode(xv[:100]), trained.encode(torch.from_numpy(xv[:100])))
    np.testing.assert_array_equal(trained.encode(xv[:10].astype(np.float64)), trained.encode(xv[:10]))


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_lut_sums_match_decoded_distances(data, trained, metric):
    _, xv = data
    q, x = xv[:5], xv[100:300]
    codes = trained.encode(x)
    rec = trained.decode(codes)
    lut = trained.compute_lut(q, metric).numpy()  # (nq, m, ksub)
    assert lut.shape == (5, trained.m, trained.ksub)
    adc = lut[:, np.arange(trained.m)[None, :], codes].sum(-1)  # (nq, n)
    want = q @ rec.T if metric == "ip" else ((q[:, None] - rec[None]) ** 2).sum(-1)
    np.testing.assert_allclose(adc, want, rtol=1e-4, atol=1e-3)


def test_state_dict_roundtrip(data, trained):
    _, xv = data
    other = ProductQuantizer(32, 8, nbits=6, device="cpu")
    other.load_state_dict(trained.state_dict())
    np.testing.assert_array_equal(other.encode(xv[:50]), trained.encode(xv[:50]))


def test_bad_parameters():
    with pytest.raises(ValueError, match="must divide d=384"):
        ProductQuantizer(384, 50)
    with pytest.raises(ValueError, match="nbits"):
        ProductQuantizer(32, 8, nbits=9)
    pq = ProductQuantizer(32, 8, nbits=8)
    with pytest.raises(ValueError, match="not trained"):
        pq.encode(np.zeros((2, 32), np.float32))
    with pytest.raises(ValueError, match="at least 256"):
        pq.train(np.zeros((100, 32), np.float32))


def test_input_validation_messages():
    with pytest.raises(ValueError, match="query has dimension 512 but the index has 384"):
        as_matrix(np.zeros((2, 512), np.float32), 384, "query")
    with pytest.raises(ValueError, match="floating point"):
        as_matrix(np.zeros((2, 4), np.int64), 4)
    with pytest.raises(ValueError, match="NaN"):
        as_matrix(np.full((2, 4), np.nan, np.float32), 4)
    with pytest.raises(ValueError, match="2-D"):
        as_matrix(np.zeros((2, 2, 4), np.float32), 4)
    assert as_matrix(np.zeros(4, np.float32), 4).shape == (1, 4)
    with pytest.raises(ValueError, match="integers"):
        as_ids(np.array([1.5]))
    with pytest.raises(ValueError, match="non-negative"):
        as_ids([3, -2])
    with pytest.raises(ValueError, match="got 2 ids for 3 vectors"):
        as_ids([1, 2], 3)
