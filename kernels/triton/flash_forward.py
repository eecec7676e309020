"""FlashAttention-2 forward in Triton over packed (varlen) sequences; the entry points are in flash_attention.py.

One program per (query block, head, sequence). The query tile stays in registers while tiles of K and V stream
through; the softmax is computed online (online_softmax.py: running max and sum in the log2 domain, so exp2 is used),
so the T x S score matrix never reaches memory and memory is O(T + S). Blocks that are entirely visible run without
any mask; only the diagonal band (causal) and the ragged last key block take the masked path, and blocks entirely
above the diagonal are never visited. The forward also saves the logsumexp of every row for the backward.

The tiling rules here (configs, register pruning, tune key, sequence bounds) are shared with flash_backward.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton import _alloc, _tuning
from kernels.triton._launch import INTERPRET, precision
from kernels.triton.online_softmax import (
    log2_scale,
    online_softmax_finish,
    online_softmax_init,
    online_softmax_update,
)

# On GPU the autotuner picks per (seqlen bucket, head dim, group, causal, dtype) among FA2-style tiles for H100-class
# parts; the lists were checked offline for sm_90 (ptxas): none exceeds shared memory and the fwd/bwd-q ones do not
# spill registers once prune_rows drops 4-warp tiles whose fp32 accumulator would need over 64 registers per thread.
GPU_CONFIGS = _tuning.tile_configs(
    [
        (128, 64, 8, 3),
        (128, 128, 8, 2),
        (128, 128, 8, 3),
        (128, 64, 4, 3),
        (128, 32, 4, 4),
        (64, 64, 4, 3),
        (64, 32, 4, 4),
    ],
    ("BLOCK_M", "BLOCK_N"),
)
# Small tiles under the interpreter: faster there, and BLOCK_M != BLOCK_N exercises the diagonal-band logic.
INTERP_CONFIGS = _tuning.tile_configs([(32, 16, 4, 1)], ("BLOCK_M", "BLOCK_N"))
TUNE_KEY = ["TUNE_Q", "TUNE_K", "HEAD_DIM", "GROUP", "CAUSAL", "PRECISION"]


def prune_rows(configs, named_args, **kwargs):
    # fp32 accumulator of BLOCK_M x HEAD_DIM spread over the warps: keep it within 64 registers per thread.
    d = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM", 128))
    keep = [c for c in configs if c.kwargs["BLOCK_M"] * d <= 64 * 32 * c.num_warps]
    return keep or configs[-1:]


@triton.jit
def seq_bounds(CU_Q, CU_K, b):
    """Sequence b of the packed batch -> (q_start, q_len, k_start, k_len)."""
    q_start = tl.load(CU_Q + b)
    q_len = tl.load(CU_Q + b + 1) - q_start
    k_start = tl.load(CU_K + b)
    k_len = tl.load(CU_K + b + 1) - k_start
    return q_start, q_len, k_start, k_len


@triton.jit
def _attend_keys(
    acc,
    l_i,
    m_i,
    q,
    K,
    V,
    stride_kt,
    stride_vt,
    last_key,
    full,
    hi,
    k_len,
    qk_scale,
    CAUSAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # K, V point at this sequence's first key of this kv head; last_key (BLOCK_M,) is the last key each row sees.
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    # Keys [0, full) are visible to every row: no mask.
    for start_n in range(0, full, BLOCK_N):
        cols = start_n + offs_n
        k = tl.load(K + cols[None, :] * stride_kt + offs_d[:, None])  # (D, BLOCK_N)
        v = tl.load(V + cols[:, None] * stride_vt + offs_d[None, :])  # (BLOCK_N, D)
        qk = tl.dot(q, k, input_precision=PRECISION)  # (BLOCK_M, BLOCK_N) fp32
        acc, l_i, m_i = online_softmax_update(acc, l_i, m_i, qk, True, v, qk_scale, False, PRECISION)
    # Keys [full, hi): the diagonal band (causal) and the ragged last block.
    for start_n in range(full, hi, BLOCK_N):
        cols = start_n + offs_n
        k = tl.load(K + cols[None, :] * stride_kt + offs_d[:, None], mask=cols[None, :] < k_len, other=0.0)
        v = tl.load(V + cols[:, None] * stride_vt + offs_d[None, :], mask=cols[:, None] < k_len, other=0.0)
        qk = tl.dot(q, k, input_precision=PRECISION)
        keep = cols[None, :] < k_len
        if CAUSAL:
            keep = keep & (cols[None, :] <= last_key[:, None])
        acc, l_i, m_i = online_softmax_update(acc, l_i, m_i, qk, keep, v, qk_scale, True, PRECISION)
    return acc, l_i, m_i


@_tuning.autotune(
    configs=INTERP_CONFIGS if INTERPRET else GPU_CONFIGS,
    key=TUNE_KEY,
    prune_configs_by={"early_config_prune": prune_rows},
)
@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    O,
    LSE,
    CU_Q,
    CU_K,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    sm_scale,
    TUNE_Q,
    TUNE_K,
    H: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    GROUP: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # Heaviest (last, under causal) query blocks first: shortens the tail of the launch.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    q_start, q_len, k_start, k_len = seq_bounds(CU_Q, CU_K, b)
    start_m = pid_m * BLOCK_M
    if start_m >= q_len:
        return
    kvh = h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < q_len

    q = tl.load(
        Q + (q_start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :], mask=row_ok[:, None], other=0.0
    )
    Kb = K + k_start.to(tl.int64) * stride_kt + kvh * stride_kh
    Vb = V + k_start.to(tl.int64) * stride_vt + kvh * stride_vh

    diag = k_len - q_len  # query i sees keys j <= i + diag
    if CAUSAL:
        hi = tl.maximum(tl.minimum(k_len, start_m + BLOCK_M + diag), 0)
        # Keys <= start_m + diag are visible to every row of the block.
        full = tl.minimum(tl.maximum(start_m + diag + 1, 0) // BLOCK_N * BLOCK_N, k_len // BLOCK_N * BLOCK_N)
    else:
        hi = k_len
        full = k_len // BLOCK_N * BLOCK_N

    acc, l_i, m_i = online_softmax_init(BLOCK_M, HEAD_DIM)
    acc, l_i, m_i = _attend_keys(
        acc,
        l_i,
        m_i,
        q,
        Kb,
        Vb,
        stride_kt,
        stride_vt,
        offs_m + diag,
        full,
        hi,
        k_len,
        log2_scale(sm_scale),
        CAUSAL,
        BLOCK_N,
        HEAD_DIM,
        PRECISION,
    )
    # +inf logsumexp for empty rows makes the backward's exp2(s - lse) exactly 0 there.
    acc, lse = online_softmax_finish(acc, l_i, m_i, float("inf"))
    tl.store(LSE + (q_start + offs_m) * H + h, lse, mask=row_ok)
    o_ptrs = O + (q_start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_ok[:, None])


def forward(q, k, v, cu_q, cu_k, max_q: int, max_k: int, causal: bool, scale: float):
    """q (total_q, H, D), k/v (total_k, Hkv, D) -> o (total_q, H, D), lse (total_q, H) fp32 in log2 units."""
    total_q, H, D = q.shape
    batch = cu_q.numel() - 1
    o = _alloc.empty_like(q)
    lse = _alloc.empty((total_q, H), torch.float32, q.device)
    if total_q == 0 or batch == 0 or max_q == 0:
        return o, lse
    grid = lambda meta: (triton.cdiv(max_q, meta["BLOCK_M"]), H, batch)  # noqa: E731
    _fwd_kernel[grid](
        q,
        k,
        v,
        o,
        lse,
        cu_q,
        cu_k,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        o.stride(0),
        o.stride(1),
        scale,
        _tuning.bucket(max_q),
        _tuning.bucket(max_k),
        H=H,
        HEAD_DIM=D,
        GROUP=H // k.shape[1],
        CAUSAL=causal,
        PRECISION=precision(q.dtype),
    )
    return o, lse
