"""The torch backend's own paths: the per-list (kernel) IVF scan against the CPU candidate scan, CUDA against the
CPU, and the kernels.pq_adc_topk contract it scans with."""

import numpy as np
import pytest
import torch

import kernels
from retrieval.backend import make_backend
from retrieval.torch_backend import TorchIVFPQ
from tests.retrieval.helpers import clustered, recall

D = 32


@pytest.fixture(scope="module")
def data():
    return clustered(5000, D, seed=0), clustered(200, D, seed=1)


def ivfpq(metric, xb, device="cpu"):
    b = make_backend("ivfpq", D, metric, 8, 6, 32, backend="torch", device=device)
    assert isinstance(b, TorchIVFPQ)
    x = torch.from_numpy(xb).to(b.device)
    b.train(x)
    b.add(x, np.arange(len(xb)))
    return b


def test_grouped_scan_matches_flat_scan(data):
    # the per-list scan (the Triton kernel path on CUDA) must agree with the CPU candidate scan
    xb, xq = data
    q = torch.from_numpy(xq)
    for metric in ("ip", "l2"):
        b = ivfpq(metric, xb)
        D1, I1 = b.search(q, 10, 4, None)
        b.force_grouped = True
        D2, I2 = b.search(q, 10, 4, None)
        np.testing.assert_allclose(D1, D2, rtol=1e-4, atol=1e-3)
        assert recall(I1, I2) > 0.99


def test_adc_scan_matches_brute_force():
    # the contract every torch scan relies on: kernels.pq_adc_topk, the one ADC entry point
    g = torch.Generator().manual_seed(0)
    lut = torch.rand(70, 4, 16, generator=g)
    codes = torch.randint(0, 16, (300, 4), dtype=torch.uint8, generator=g)
    v, i = kernels.pq_adc_topk(lut, codes, 5)
    full = lut[:, torch.arange(4)[None, :], codes.long()].sum(-1)  # (nq, n)
    want = full.topk(5, largest=False)
    torch.testing.assert_close(v, want.values)
    torch.testing.assert_close(full.gather(1, i), want.values)
    v, i = kernels.pq_adc_topk(lut[:2], codes[:3], 5)  # n < k: padding
    assert (i[:, 3:] == -1).all() and torch.isinf(v[:, 3:]).all()
    lut = torch.randn(9, 8, 64, generator=g)
    codes = torch.randint(0, 64, (500, 8), dtype=torch.uint8, generator=g)
    v, i = kernels.pq_adc_topk(lut, codes, 7)
    full = lut[:, torch.arange(8)[None, :], codes.long()].sum(-1)
    torch.testing.assert_close(v, full.topk(7, largest=False).values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full.gather(1, i), v, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_cuda_matches_cpu(data, metric):
    # on CUDA the IVF scan goes list by list through kernels.pq_adc_topk (Triton)
    xb, xq = data
    cpu = ivfpq(metric, xb)
    gpu = make_backend("ivfpq", D, metric, 8, 6, 32, backend="torch", device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    D1, I1 = cpu.search(torch.from_numpy(xq), 10, 4, None)
    D2, I2 = gpu.search(torch.from_numpy(xq).cuda(), 10, 4, None)
    np.testing.assert_allclose(D1, D2, rtol=1e-3, atol=1e-3)
    assert recall(I1, I2) > 0.99
    pq_cpu = make_backend("pq", D, metric, 8, 6, backend="torch", device="cpu")
    pq_cpu.train(torch.from_numpy(xb))
    pq_cpu.add(torch.from_numpy(xb), np.arange(len(xb)))
    pq_gpu = make_backend("pq", D, metric, 8, 6, backend="torch", device="cuda")
    pq_gpu.load_state_dict(pq_cpu.state_dict())
    I_gpu = pq_gpu.search(torch.from_numpy(xq).cuda(), 10, 1, None)[1]
    assert recall(I_gpu, pq_cpu.search(torch.from_numpy(xq), 10, 1, None)[1]) > 0.99
