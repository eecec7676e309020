"""Triton PQ distance scan with per-tile top-k (kernels/triton/pq_adc.py) against the float64 reference."""

from __future__ import annotations

import importlib

import pytest
import torch

import kernels
from kernels import reference as R
from tests.kernels.conftest import CUDA
from tests.kernels.helpers import gen, randn

pytest.importorskip("triton")
pq = importlib.import_module("kernels.triton.pq_adc")


def _check(lut: torch.Tensor, codes: torch.Tensor, k: int) -> None:
    values, indices = pq.pq_adc_topk(lut, codes, k)
    ref_v, _ = R.pq_adc_topk(lut.double().cpu(), codes.cpu(), k)
    values, indices = values.cpu(), indices.cpu()
    n = codes.shape[0]
    assert values.shape == indices.shape == (lut.shape[0], k)
    assert values.dtype == torch.float32 and indices.dtype == torch.int64
    # Ties make the exact indices ambiguous: compare the distances, then check each index gives its distance.
    kk = min(k, n)
    assert torch.allclose(values[:, :kk].double(), ref_v[:, :kk], rtol=1e-5, atol=1e-5)
    assert torch.isinf(values[:, kk:]).all() and (indices[:, kk:] == -1).all()
    assert ((indices[:, :kk] >= 0) & (indices[:, :kk] < n)).all()
    for q in range(lut.shape[0]):
        idx = indices[q, :kk]
        assert idx.unique().numel() == kk
        dist = lut[q].double().cpu().gather(1, codes.cpu()[idx].long().T).sum(0)
        assert torch.allclose(values[q, :kk].double(), dist, rtol=1e-5, atol=1e-5)


# (nq, m, ksub, n, k): 8- and 4-bit tables, m not a multiple of the 16-byte column chunk, n off the tile size,
# n < k (padding), k of 1.
@pytest.mark.parametrize(
    "nq,m,ksub,n,k", [(3, 8, 256, 300, 10), (2, 5, 16, 70, 100), (1, 20, 256, 1000, 40), (2, 16, 256, 129, 1)]
)
def test_topk_matches_reference(nq, m, ksub, n, k, device, poison):
    g = gen()
    lut = randn(nq, m, ksub, g=g, dtype=torch.float32, device=device)  # negative entries test the key packing
    codes = torch.randint(0, ksub, (n, m), generator=g, dtype=torch.uint8).to(device)
    _check(lut, codes, k)


def test_duplicate_codes_and_strided_lut(device, poison):
    g = gen()
    codes = torch.randint(0, 256, (40, 8), generator=g, dtype=torch.uint8).repeat(3, 1).to(device)  # exact ties
    lut = randn(8, 256, 2, g=g, dtype=torch.float32, device=device).permute(2, 0, 1)  # (2, 8, 256), non-contiguous
    _check(lut, codes, 25)


def test_empty_inputs_and_bad_codes(device, force_triton):
    lut = torch.zeros(2, 4, 16, device=device)
    v, i = pq.pq_adc_topk(lut, torch.zeros(0, 4, dtype=torch.uint8, device=device), 3)
    assert torch.isinf(v).all() and (i == -1).all()
    # Bad codes are rejected once, by the dispatch's checks (kernels/checks.py), whichever backend runs.
    with pytest.raises(ValueError):
        kernels.pq_adc_topk(lut, torch.zeros(5, 4, dtype=torch.int32, device=device), 3)
    with pytest.raises(ValueError):
        kernels.pq_adc_topk(lut, torch.zeros(5, 3, dtype=torch.uint8, device=device), 3)


def test_coverage():
    # k past MAX_K and databases past one launch's grid are not the kernel's: the dispatch runs the reference.
    codes = torch.zeros(100, 4, dtype=torch.uint8)
    assert pq.unsupported(codes, pq.MAX_K) is None
    assert "k=" in pq.unsupported(codes, pq.MAX_K + 1)
    huge = codes[:1].expand(2**31, 4)  # a stride-0 view: no memory
    assert "grid" in pq.unsupported(huge, 10)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_large_scan():
    g = gen()
    lut = randn(4, 32, 256, g=g, dtype=torch.float32, device="cuda")
    codes = torch.randint(0, 256, (200_003, 32), generator=g, dtype=torch.uint8).to("cuda")
    _check(lut, codes, 100)
