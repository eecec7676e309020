"""Triton fused MoE (kernels/triton/fused_moe.py: sorted grouped GEMMs) against the float64 per-expert reference.

On CPU the kernels run in the Triton interpreter on float32; on CUDA natively in fp32, fp16 and bf16 with the
production tiles.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

import kernels
from kernels import reference as R
from tests.kernels.conftest import CUDA
from tests.kernels.helpers import TOL, dtypes, gen, randn, rel_err

pytest.importorskip("triton")
fm = importlib.import_module("kernels.triton.fused_moe")


def _inputs(T, d, Fd, E, topk, *, g, dtype, device, skew=False):
    """Random x (T, d), weights scaled to keep activations O(1), distinct experts per token, weights summing to 1."""
    x = randn(T, d, g=g, dtype=dtype, device=device)
    wg, wu = (randn(E, Fd, d, g=g, dtype=torch.float32, device=device).div_(math.sqrt(d)).to(dtype) for _ in range(2))
    wd = randn(E, d, Fd, g=g, dtype=torch.float32, device=device).div_(math.sqrt(Fd)).to(dtype)
    if skew:  # most tokens on expert 0: one expert spans several blocks, the others are nearly empty
        ids = torch.stack(
            [
                torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(E - 1, generator=g)[: topk - 1] + 1])
                for _ in range(T)
            ]
        )
    else:
        ids = torch.stack([torch.randperm(E, generator=g)[:topk] for _ in range(T)])
    w = torch.rand(T, topk, generator=g)
    w = w / w.sum(1, keepdim=True)
    return x, wg, wu, wd, w.to(device), ids.to(device)


def _ref(x, wg, wu, wd, w, ids):
    return R.fused_moe(*(t.double().cpu() for t in (x, wg, wu, wd, w)), ids.cpu())


# (T, d, F, E, topk, skew): T * topk and d, F off the tiles (16-row blocks, 32/16 tiles under the interpreter),
# decode T = 1, top-1 / top-2 / top-4, more experts than assignments (empty experts), one skewed routing, and the
# widest MoE served: Qwen3-MoE's 128 experts top-8 (OLMoE's 64 top-8), at a small width.
CASES = [
    (37, 48, 40, 4, 2, False),
    (1, 32, 64, 8, 2, False),
    (23, 40, 24, 3, 1, False),
    (9, 32, 48, 16, 4, False),
    (45, 24, 56, 6, 2, True),
    (13, 32, 24, 128, 8, False),
    (3, 24, 16, 64, 8, True),
]


@pytest.mark.parametrize("T,d,Fd,E,topk,skew", CASES)
def test_matches_reference(T, d, Fd, E, topk, skew, device, poison):
    g = gen()
    for dtype in dtypes(device):
        x, wg, wu, wd, w, ids = _inputs(T, d, Fd, E, topk, g=g, dtype=dtype, device=device, skew=skew)
        out = fm.fused_moe(x, wg, wu, wd, w, ids)
        assert out.dtype == dtype and out.shape == (T, d)
        err = rel_err(out, _ref(x, wg, wu, wd, w, ids))
        assert err < TOL[dtype], (dtype, err)


def test_larger_blocks_strided_weights_and_int32_ids(device, poison):
    # BLOCK_M = 32 (the GPU's mid-size choice), weights as transposed views of (E, in, out) storage and int32 ids.
    g = gen()
    T, d, Fd, E, topk = 29, 32, 48, 4, 2
    x, wg, wu, wd, w, ids = _inputs(T, d, Fd, E, topk, g=g, dtype=torch.float32, device=device)
    wg_t, wu_t, wd_t = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (wg, wu, wd))  # same values
    assert wg_t.stride(-1) != 1
    out = fm.fused_moe(x, wg_t, wu_t, wd_t, w, ids.int(), block_m=32)
    assert rel_err(out, _ref(x, wg, wu, wd, w, ids)) < TOL[torch.float32]


def test_align_blocks_are_single_expert_and_cover_every_assignment():
    g = gen()
    T, topk, E, bm = 50, 3, 7, 16
    ids = torch.stack([torch.randperm(E, generator=g)[:topk] for _ in range(T)])
    sorted_ids, block_expert = fm.align(ids, E, bm)
    n = T * topk
    rows = sorted_ids.view(-1, bm)
    assert sorted(sorted_ids[sorted_ids < n].tolist()) == list(range(n))  # each assignment exactly once
    for b, e in enumerate(block_expert.tolist()):
        real = rows[b][rows[b] < n]
        if e < 0:
            assert real.numel() == 0
        else:
            assert (ids.reshape(-1)[real.long()] == e).all()
            assert (real.diff() > 0).all()  # token order kept inside an expert


def test_invalid_ids_and_empty_batch(device, poison, force_triton):
    # Ids outside [0, E) contribute nothing, like the reference's loop over experts.
    g = gen()
    x, wg, wu, wd, w, ids = _inputs(6, 32, 32, 4, 2, g=g, dtype=torch.float32, device=device)
    ids[0, 1], ids[3, 0] = -1, 4
    assert rel_err(fm.fused_moe(x, wg, wu, wd, w, ids), _ref(x, wg, wu, wd, w, ids)) < TOL[torch.float32]
    out = fm.fused_moe(x[:0], wg, wu, wd, w[:0], ids[:0])
    assert out.shape == (0, 32)
    with pytest.raises(ValueError):  # through the dispatch, whose checks reject it for every backend
        kernels.fused_moe(x, wg, wu, wd[:, :16], w, ids)


def test_gpu_configs_respect_hardware_constraints():
    for cfg in fm.GPU_CONFIGS + fm.INTERP_CONFIGS:
        for name in ("BLOCK_N", "BLOCK_K"):
            b = cfg.kwargs[name]
            assert b >= 16 and b & (b - 1) == 0, cfg
        assert cfg.num_warps in (1, 2, 4, 8, 16)
    for n in (1, 40, 300, 5000, 100_000):
        bm = fm.block_rows(n, 8)
        assert bm >= 16 and bm & (bm - 1) == 0
    # The first config (the only one with PQRAG_TUNE_CONFIGS=1) survives pruning for every BLOCK_M, both kernels and
    # both precisions, so it fits the shared memory and registers everywhere.
    for bm in (16, 32, 64, 128):
        for n_acc in (1, 2):
            for prec in ("ieee", "tf32"):
                assert fm.GPU_CONFIGS[0] in fm.prune(fm.GPU_CONFIGS, {}, BLOCK_M=bm, N_ACC=n_acc, PRECISION=prec)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("T", [1, 300, 2048])
def test_gpu_production_shapes(T):
    # Mixtral-like proportions at reduced width, decode to prefill sizes (every BLOCK_M choice), bf16.
    g = gen()
    d, Fd, E, topk = 512, 1792, 8, 2
    x, wg, wu, wd, w, ids = _inputs(T, d, Fd, E, topk, g=g, dtype=torch.bfloat16, device="cuda")
    out = fm.fused_moe(x, wg, wu, wd, w, ids)
    ref = R.fused_moe(x.float(), wg.float(), wu.float(), wd.float(), w, ids)
    assert rel_err(out, ref) < TOL[torch.bfloat16]
