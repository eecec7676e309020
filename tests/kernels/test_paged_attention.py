"""Triton paged decode and paged chunked prefill (kernels/triton/paged_attention.py) against the float64 references;
with the cache write (write_kv.py), the serving sequence of chunks then a decode step."""

from __future__ import annotations

import importlib

import pytest
import torch

from kernels import reference as R
from tests.kernels.conftest import CUDA
from tests.kernels.helpers import TOL, cu_seqlens, dtypes, gen, paged_cache, randn, rel_err

pytest.importorskip("triton")
pa = importlib.import_module("kernels.triton.paged_attention")
split = importlib.import_module("kernels.triton.paged_split")
wkv = importlib.import_module("kernels.triton.write_kv")


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype) if x.is_floating_point() else x


# (seq_lens, H, Hkv, D, block_size, num_splits): GQA 1/2/3/4/8, lengths off the block and tile sizes including 1,
# a block size that is not a power of two, forced split-K (more splits than some sequences have keys), and the
# automatic plan.
DECODE_CASES = [
    ([5, 40, 33], 4, 2, 32, 16, None),
    ([50, 1], 8, 2, 64, 7, 3),
    ([70, 17, 3], 3, 1, 32, 16, 4),
    ([100], 4, 4, 32, 16, 1),
    ([37], 8, 1, 128, 16, None),
]


@pytest.mark.parametrize("lens,H,Hkv,D,bs,splits", DECODE_CASES)
def test_decode(lens, H, Hkv, D, bs, splits, device, poison):
    g = gen()
    for dtype in dtypes(device):
        kc, vc, tables, sl = paged_cache(lens, bs, Hkv, D, g=g, dtype=dtype, device=device)
        q = randn(len(lens), H, D, g=g, dtype=dtype, device=device)
        o = pa.paged_attention(q, kc, vc, tables, sl, num_splits=splits)
        ref = R.paged_attention(q.double(), kc.double(), vc.double(), tables, sl)
        assert o.dtype == dtype and o.shape == q.shape
        assert rel_err(o, ref) < TOL[dtype], (dtype, rel_err(o, ref))


# (seq_lens, query_lens, H, Hkv, D, block_size, num_splits): chunks at the end of a cached prefix, a chunk that is
# the whole sequence (no prefix), single-token chunks (decode through the prefill path), an empty chunk.
PREFILL_CASES = [
    ([40, 33, 9], [21, 1, 9], 4, 2, 32, 16, None),
    ([50, 26], [13, 0], 8, 2, 64, 7, 3),
    ([70, 17], [33, 17], 4, 1, 32, 16, 2),
    ([30], [30], 2, 2, 128, 8, 1),
]


@pytest.mark.parametrize("lens,qlens,H,Hkv,D,bs,splits", PREFILL_CASES)
@pytest.mark.parametrize("causal", [True, False])
def test_prefill(lens, qlens, H, Hkv, D, bs, splits, causal, device, poison):
    g = gen()
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    kc, vc, tables, sl = paged_cache(lens, bs, Hkv, D, g=g, dtype=dtype, device=device)
    cq = cu_seqlens(qlens, device)
    q = randn(sum(qlens), H, D, g=g, dtype=dtype, device=device)
    o = pa.paged_prefill_attention(q, kc, vc, tables, sl, cq, max(qlens), causal=causal, num_splits=splits)
    ref = R.paged_prefill_attention(q.double(), kc.double(), vc.double(), tables, sl, cq, causal=causal)
    assert rel_err(o, ref) < TOL[dtype]


def test_prefill_without_max_seqlen_and_custom_scale(device):
    g = gen()
    kc, vc, tables, sl = paged_cache([19, 8], 4, 2, 32, g=g, dtype=torch.float32, device=device)
    cq = cu_seqlens([5, 8], device)
    q = randn(13, 4, 32, g=g, dtype=torch.float32, device=device)
    o = pa.paged_prefill_attention(q, kc, vc, tables, sl, cq, softmax_scale=0.3)
    ref = R.paged_prefill_attention(q.double(), kc.double(), vc.double(), tables, sl, cq, softmax_scale=0.3)
    assert rel_err(o, ref) < TOL[torch.float32]


def test_chunked_prefill_then_decode_matches_dense_attention(device, poison):
    # The serving sequence: write a prompt chunk by chunk into shuffled blocks, attend each chunk over its prefix,
    # then decode one token; all against dense causal attention over the full sequence.
    g = gen()
    H, Hkv, D, bs, n = 4, 2, 32, 16, 45
    q, k, v = (
        randn(n, H, D, g=g, dtype=torch.float32, device=device),
        *(randn(n, Hkv, D, g=g, dtype=torch.float32, device=device) for _ in range(2)),
    )
    num_blocks = 8
    kc = torch.zeros(num_blocks, bs, Hkv, D, device=device)
    vc = torch.zeros_like(kc)
    table = torch.randperm(num_blocks, generator=g)[:4].to(device=device, dtype=torch.int32)[None]
    out = torch.empty_like(q)
    for start, end in [(0, 20), (20, 44)]:
        pos = torch.arange(start, end, device=device)
        slots = table[0, pos // bs].long() * bs + pos % bs
        wkv.write_kv(k[start:end], v[start:end], kc, vc, slots)
        sl = torch.tensor([end], dtype=torch.int32, device=device)
        cq = torch.tensor([0, end - start], dtype=torch.int32, device=device)
        out[start:end] = pa.paged_prefill_attention(q[start:end], kc, vc, table, sl, cq, end - start)
    slot = table[0, 44 // bs].long() * bs + 44 % bs
    wkv.write_kv(k[44:], v[44:], kc, vc, slot[None])
    out[44:] = pa.paged_attention(q[44:], kc, vc, table, torch.tensor([n], dtype=torch.int32, device=device))
    ref = R.flash_attention(q[None].double(), k[None].double(), v[None].double(), True)[0]
    assert rel_err(out, ref) < TOL[torch.float32]


def test_gpu_configs_respect_hardware_constraints():
    # Power-of-two key tiles of at least 16 (tl.dot), dividing the split-K partition size.
    for configs, align in [(pa.gpu_configs(), split.GPU_PARTITION_ALIGN), (pa.interp_configs(), 16)]:
        for cfg in configs:
            b = cfg.kwargs["BLOCK_N"]
            assert b >= 16 and b & (b - 1) == 0 and align % b == 0, cfg


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_long_context_decode_with_auto_split():
    g = gen()
    lens = [4000, 17, 8191]
    kc, vc, tables, sl = paged_cache(lens, 16, 8, 128, g=g, dtype=torch.bfloat16, device="cuda")
    q = randn(len(lens), 32, 128, g=g, dtype=torch.bfloat16, device="cuda")
    o = pa.paged_attention(q, kc, vc, tables, sl)
    ref = R.paged_attention(q.double(), kc.double(), vc.double(), tables, sl)
    assert rel_err(o, ref) < TOL[torch.bfloat16]
