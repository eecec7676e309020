"""PQ asymmetric-distance scan with top-k in Triton.

dist[q, i] = sum_j lut[q, j, codes[i, j]] for every code, keeping the k smallest per query, without ever writing the
nq x n distance matrix:

1. one program per (query, tile of BLOCK_N codes): the codes are read in column chunks (16 bytes of a row per load),
   each byte gathers its entry of the query's table (m * ksub * 4 bytes, L1/L2 resident), and the tile's distances
   are reduced to its K_P smallest (K_P = next power of two >= k) by sorting (distance, index) pairs packed in one
   int64: the distance's float bits mapped to an order-preserving int32 above the code index;
2. the n / BLOCK_N * K_P surviving keys per query (1/64 of n for k <= 16) are merged with torch.topk on the packed
   keys, which orders by distance and then index, and unpacked.

The query index is the fastest-varying grid axis, so programs that share a tile of codes run together and the codes
come from HBM about once. Larger k and databases past one launch's grid are not covered (`unsupported`): the dispatch
runs the reference, the blocked torch scan of kernels/reference.py, for them.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.triton import _alloc
from kernels.triton._launch import INTERPRET, last_dim_contiguous

MAX_K = 1024  # the sort network of a tile grows with k; larger k runs the reference on the same device
_M_CHUNK = 16  # bytes of a code row loaded at once
_MAX_TILES = 65535  # CUDA's limit on the second grid axis


@triton.jit
def _scan_kernel(
    LUT,
    CODES,
    KEYS,
    n,
    m,
    ksub,
    stride_lq,
    stride_lm,
    stride_cn,
    n_tiles,
    K_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    M_CHUNK: tl.constexpr,
    KSUB_P: tl.constexpr,
    USE_GATHER: tl.constexpr,
):
    qi = tl.program_id(0)
    tile = tl.program_id(1)
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < n
    offs_j = tl.arange(0, M_CHUNK)
    lut_q = LUT + qi.to(tl.int64) * stride_lq
    code_rows = CODES + offs_n.to(tl.int64)[:, None] * stride_cn
    d = tl.zeros([BLOCK_N], dtype=tl.float32)
    for j0 in range(0, m, M_CHUNK):
        j = j0 + offs_j
        ok = n_ok[:, None] & (j < m)[None, :]
        c = tl.load(code_rows + j[None, :], mask=ok, other=0).to(tl.int32)  # (BLOCK_N, M_CHUNK)
        if USE_GATHER:
            # Stage this chunk of the table, (KSUB_P, M_CHUNK), in registers; the cross-warp gather goes through
            # shared memory, where random lookups cost bank conflicts instead of L1 cache-line wavefronts.
            offs_c = tl.arange(0, KSUB_P)
            tab = tl.load(
                lut_q + j[None, :] * stride_lm + offs_c[:, None],
                mask=(j < m)[None, :] & (offs_c < ksub)[:, None],
                other=0.0,
            )
            t = tl.gather(tab, c, axis=0)
        else:
            t = tl.load(lut_q + j[None, :] * stride_lm + c, mask=ok, other=0.0)
        d += tl.sum(t, axis=1)
    d = tl.where(n_ok, d, float("inf"))

    # Order-preserving int32 image of the float: flip the magnitude bits of negatives.
    bits = d.to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    packed = (key.to(tl.int64) << 32) | offs_n.to(tl.int64)
    packed = tl.sort(packed)
    # The first K_P of the sorted tile: row 0 of a (BLOCK_N // K_P, K_P) view.
    rows = tl.reshape(packed, (BLOCK_N // K_P, K_P))
    first = tl.sum(tl.where(tl.arange(0, BLOCK_N // K_P)[:, None] == 0, rows, 0), axis=0)
    tl.store(KEYS + (qi.to(tl.int64) * n_tiles + tile) * K_P + tl.arange(0, K_P), first)


def _use_gather() -> bool:
    return os.environ.get("PQRAG_PQ_GATHER", "0") == "1"


def _unpack(keys: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    key = (keys >> 32).to(torch.int32)
    bits = key ^ ((key >> 31) & 0x7FFFFFFF)
    values = bits.view(torch.float32)
    idx = keys & 0xFFFFFFFF
    idx = torch.where(idx >= n, torch.full_like(idx, -1), idx)
    return values, idx


def _block_n(k: int) -> tuple[int, int]:
    """-> (K_P, BLOCK_N): the top-k kept per tile (a power of two >= k) and codes per tile (4 x that at least)."""
    k_p = max(16, triton.next_power_of_2(k))
    return k_p, max(64 if INTERPRET else 1024, 4 * k_p)


def unsupported(codes: torch.Tensor, k: int) -> str | None:
    """Why the kernel cannot take this scan (checked arguments), or None."""
    n = codes.shape[0]
    if k > MAX_K:
        return f"the Triton ADC scan keeps at most k={MAX_K} per query; got k={k}"
    if n >= 2**31 or triton.cdiv(n, _block_n(k)[1]) > _MAX_TILES:
        return f"{n} codes exceed one Triton ADC scan's grid"
    return None


def pq_adc_topk(lut: torch.Tensor, codes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """lut (nq, m, ksub) float32, codes (n, m) uint8 -> the k smallest distances (nq, k) float32 ascending and their
    positions (nq, k) int64; +inf / -1 padding when n < k. The arguments of kernels.pq_adc_topk, checked."""
    nq, m, ksub = lut.shape
    n = codes.shape[0]
    values = torch.full((nq, k), float("inf"), device=lut.device, dtype=torch.float32)
    indices = torch.full((nq, k), -1, device=lut.device, dtype=torch.int64)
    if nq == 0 or n == 0 or k == 0:
        return values, indices
    lut = lut.float()
    lut, codes = last_dim_contiguous(lut), last_dim_contiguous(codes)

    k_p, block_n = _block_n(k)
    n_tiles = triton.cdiv(n, block_n)
    keys = _alloc.empty((nq, n_tiles * k_p), torch.int64, lut.device)
    _scan_kernel[(nq, n_tiles)](
        lut,
        codes,
        keys,
        n,
        m,
        ksub,
        lut.stride(0),
        lut.stride(1),
        codes.stride(0),
        n_tiles,
        K_P=k_p,
        BLOCK_N=block_n,
        M_CHUNK=_M_CHUNK,
        KSUB_P=max(16, triton.next_power_of_2(ksub)),
        USE_GATHER=_use_gather(),
        num_warps=8 if block_n >= 1024 else 4,
    )
    kk = min(k, keys.shape[1])
    best = torch.topk(keys, kk, dim=1, largest=False, sorted=True).values
    v, i = _unpack(best, n)
    values[:, :kk], indices[:, :kk] = v, i
    return values, indices
