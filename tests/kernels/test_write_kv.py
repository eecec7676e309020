"""Triton KV-cache write (kernels/triton/write_kv.py) against the reference's indexed assignment."""

from __future__ import annotations

import importlib

import pytest
import torch

from kernels import reference as R
from tests.kernels.helpers import dtypes, gen, randn

pytest.importorskip("triton")
wkv = importlib.import_module("kernels.triton.write_kv")


def test_write_kv(device):
    # Slots in any order, a padding slot (-1), untouched slots must keep their previous contents.
    g = gen()
    for dtype in dtypes(device):
        kc = randn(5, 6, 2, 32, g=g, dtype=dtype, device=device)
        vc = randn(5, 6, 2, 32, g=g, dtype=dtype, device=device)
        k, v = (randn(7, 2, 32, g=g, dtype=dtype, device=device) for _ in range(2))
        slots = torch.tensor([13, 0, -1, 29, 6, 7, 22], device=device)
        kr, vr = kc.clone(), vc.clone()
        wkv.write_kv(k, v, kc, vc, slots)
        R.write_kv(k, v, kr, vr, slots)
        assert torch.equal(kc, kr) and torch.equal(vc, vr)


def test_three_kv_heads_and_strided_tokens(device):
    # A head count that is not a power of two (masked head lanes) and k, v as views into one packed projection.
    g = gen()
    kc = torch.zeros(4, 4, 3, 16, device=device)
    vc = torch.zeros_like(kc)
    kv = randn(5, 2, 3, 16, g=g, dtype=torch.float32, device=device)
    k, v = kv.unbind(1)
    slots = torch.tensor([15, 2, -3, 8, 0], device=device)
    kr, vr = kc.clone(), vc.clone()
    wkv.write_kv(k, v, kc, vc, slots)
    R.write_kv(k, v, kr, vr, slots)
    assert torch.equal(kc, kr) and torch.equal(vc, vr)
    assert int((kc.abs().sum((-1, -2)) > 0).sum()) == 4  # the padding token wrote nothing
