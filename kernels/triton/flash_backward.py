"""FlashAttention-2 backward in Triton over packed (varlen) sequences; the entry points are in flash_attention.py.

The forward saves the logsumexp of every row (flash_forward.py); delta = rowsum(o * do) is precomputed, then one
kernel accumulates dk, dv per key block (looping over every query head of its group, so GQA needs no atomics) and a
second accumulates dq per query block. Both recompute P from q, k and the saved logsumexp. Tiles are pruned and keyed
as the forward's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton import _alloc, _tuning
from kernels.triton._launch import INTERPRET, precision
from kernels.triton.flash_forward import TUNE_KEY, prune_rows, seq_bounds
from kernels.triton.online_softmax import log2_scale

GPU_KV_CONFIGS = _tuning.tile_configs(
    [(128, 16, 8, 3), (128, 32, 8, 3), (64, 32, 8, 3), (128, 32, 8, 2), (64, 64, 8, 2), (64, 32, 4, 3)],
    ("BLOCK_N", "BLOCK_M"),
)
GPU_Q_CONFIGS = _tuning.tile_configs(
    [(128, 32, 8, 3), (128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3)],
    ("BLOCK_M", "BLOCK_N"),
)
# Small tiles under the interpreter, BLOCK_M != BLOCK_N (see flash_forward.py).
INTERP_KV_CONFIGS = _tuning.tile_configs([(32, 16, 4, 1)], ("BLOCK_N", "BLOCK_M"))
INTERP_Q_CONFIGS = _tuning.tile_configs([(16, 32, 4, 1)], ("BLOCK_M", "BLOCK_N"))


@triton.jit
def _bwd_preprocess(
    O,
    DO,
    DELTA,
    stride_ot,
    stride_oh,
    stride_dot,
    stride_doh,
    total_q,
    H: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    h = tl.program_id(1)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = offs_m < total_q
    o = tl.load(O + offs_m[:, None] * stride_ot + h * stride_oh + offs_d[None, :], mask=ok[:, None], other=0.0)
    do = tl.load(DO + offs_m[:, None] * stride_dot + h * stride_doh + offs_d[None, :], mask=ok[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + offs_m * H + h, delta, mask=ok)


@triton.jit
def _bwd_kv_tiles(
    dk,
    dv,
    k,
    v,
    Q,
    DO,
    LSE,
    DELTA,
    stride_qt,
    stride_dot,
    offs_n,
    offs_d,
    lo,
    hi,
    q_len,
    diag,
    qk_scale,
    H: tl.constexpr,
    MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # Transposed formulation: rows are keys (BLOCK_N), columns are queries (BLOCK_M).
    offs_mb = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_mb
        row_ok = offs_m < q_len
        q = tl.load(Q + offs_m[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        # Rows past the end get lse = +inf, hence p = 0, and zero do: they contribute nothing.
        lse = tl.load(LSE + offs_m * H, mask=row_ok, other=float("inf"))
        qkT = tl.dot(k, tl.trans(q), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M)
        pT = tl.math.exp2(qkT * qk_scale - lse[None, :])
        if MASK:
            pT = tl.where(offs_m[None, :] + diag >= offs_n[:, None], pT, 0.0)
        do = tl.load(DO + offs_m[:, None] * stride_dot + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=PRECISION)
        delta = tl.load(DELTA + offs_m * H, mask=row_ok, other=0.0)
        dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=PRECISION)
    return dk, dv


@_tuning.autotune(configs=INTERP_KV_CONFIGS if INTERPRET else GPU_KV_CONFIGS, key=TUNE_KEY)
@triton.jit
def _bwd_kv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    CU_Q,
    CU_K,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    stride_dkt,
    stride_dkh,
    stride_dvt,
    stride_dvh,
    sm_scale,
    TUNE_Q,
    TUNE_K,
    H: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    GROUP: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid_n = tl.program_id(0)
    kvh = tl.program_id(1)
    b = tl.program_id(2)
    q_start, q_len, k_start, k_len = seq_bounds(CU_Q, CU_K, b)
    start_n = pid_n * BLOCK_N
    if start_n >= k_len:
        return
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < k_len
    k = tl.load(
        K + (k_start + offs_n)[:, None] * stride_kt + kvh * stride_kh + offs_d[None, :], mask=col_ok[:, None], other=0.0
    )
    v = tl.load(
        V + (k_start + offs_n)[:, None] * stride_vt + kvh * stride_vh + offs_d[None, :], mask=col_ok[:, None], other=0.0
    )
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    qk_scale = log2_scale(sm_scale)

    diag = k_len - q_len
    q_end = tl.cdiv(q_len, BLOCK_M) * BLOCK_M
    if CAUSAL:
        # Queries i >= start_n - diag see some key of this block; i >= start_n + BLOCK_N - 1 - diag see all of them.
        lo = tl.minimum(tl.maximum(start_n - diag, 0) // BLOCK_M * BLOCK_M, q_end)
        mid = tl.minimum(tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - diag, 0), BLOCK_M) * BLOCK_M, q_end)
        mid = tl.maximum(mid, lo)
    else:
        lo = 0
        mid = 0

    q_row0 = q_start.to(tl.int64)
    for g in range(GROUP):
        h = kvh * GROUP + g
        Qh = Q + q_row0 * stride_qt + h * stride_qh
        DOh = DO + q_row0 * stride_dot + h * stride_doh
        LSEh = LSE + q_row0 * H + h
        DELTAh = DELTA + q_row0 * H + h
        dk, dv = _bwd_kv_tiles(
            dk,
            dv,
            k,
            v,
            Qh,
            DOh,
            LSEh,
            DELTAh,
            stride_qt,
            stride_dot,
            offs_n,
            offs_d,
            lo,
            mid,
            q_len,
            diag,
            qk_scale,
            H,
            True,
            BLOCK_M,
            PRECISION,
        )
        dk, dv = _bwd_kv_tiles(
            dk,
            dv,
            k,
            v,
            Qh,
            DOh,
            LSEh,
            DELTAh,
            stride_qt,
            stride_dot,
            offs_n,
            offs_d,
            mid,
            q_end,
            q_len,
            diag,
            qk_scale,
            H,
            False,
            BLOCK_M,
            PRECISION,
        )

    dk = dk * sm_scale
    tl.store(
        DK + (k_start + offs_n)[:, None] * stride_dkt + kvh * stride_dkh + offs_d[None, :],
        dk.to(DK.dtype.element_ty),
        mask=col_ok[:, None],
    )
    tl.store(
        DV + (k_start + offs_n)[:, None] * stride_dvt + kvh * stride_dvh + offs_d[None, :],
        dv.to(DV.dtype.element_ty),
        mask=col_ok[:, None],
    )


@triton.jit
def _bwd_q_tiles(
    dq,
    q,
    do,
    lse,
    delta,
    K,
    V,
    stride_kt,
    stride_vt,
    offs_m,
    offs_n,
    offs_d,
    lo,
    hi,
    k_len,
    diag,
    qk_scale,
    MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k_ptrs = K + cols[:, None] * stride_kt + offs_d[None, :]
        v_ptrs = V + cols[:, None] * stride_vt + offs_d[None, :]
        if MASK:
            k = tl.load(k_ptrs, mask=cols[:, None] < k_len, other=0.0)
            v = tl.load(v_ptrs, mask=cols[:, None] < k_len, other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
        p = tl.math.exp2(qk * qk_scale - lse[:, None])
        if MASK:
            keep = cols[None, :] < k_len
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@_tuning.autotune(
    configs=INTERP_Q_CONFIGS if INTERPRET else GPU_Q_CONFIGS,
    key=TUNE_KEY,
    prune_configs_by={"early_config_prune": prune_rows},
)
@triton.jit
def _bwd_q_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    CU_Q,
    CU_K,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    stride_dqt,
    stride_dqh,
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
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    q_start, q_len, k_start, k_len = seq_bounds(CU_Q, CU_K, b)
    start_m = pid_m * BLOCK_M
    if start_m >= q_len:
        return
    kvh = h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < q_len
    rows = q_start + offs_m
    q = tl.load(Q + rows[:, None] * stride_qt + h * stride_qh + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + rows[:, None] * stride_dot + h * stride_doh + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + rows * H + h, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + rows * H + h, mask=row_ok, other=0.0)
    Kb = K + k_start.to(tl.int64) * stride_kt + kvh * stride_kh
    Vb = V + k_start.to(tl.int64) * stride_vt + kvh * stride_vh
    qk_scale = log2_scale(sm_scale)

    diag = k_len - q_len
    if CAUSAL:
        hi = tl.maximum(tl.minimum(k_len, start_m + BLOCK_M + diag), 0)
        full = tl.minimum(tl.maximum(start_m + diag + 1, 0) // BLOCK_N * BLOCK_N, k_len // BLOCK_N * BLOCK_N)
    else:
        hi = k_len
        full = k_len // BLOCK_N * BLOCK_N
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    dq = _bwd_q_tiles(
        dq,
        q,
        do,
        lse,
        delta,
        Kb,
        Vb,
        stride_kt,
        stride_vt,
        offs_m,
        offs_n,
        offs_d,
        0,
        full,
        k_len,
        diag,
        qk_scale,
        False,
        CAUSAL,
        BLOCK_N,
        PRECISION,
    )
    dq = _bwd_q_tiles(
        dq,
        q,
        do,
        lse,
        delta,
        Kb,
        Vb,
        stride_kt,
        stride_vt,
        offs_m,
        offs_n,
        offs_d,
        full,
        hi,
        k_len,
        diag,
        qk_scale,
        True,
        CAUSAL,
        BLOCK_N,
        PRECISION,
    )
    dq = dq * sm_scale
    tl.store(
        DQ + rows[:, None] * stride_dqt + h * stride_dqh + offs_d[None, :],
        dq.to(DQ.dtype.element_ty),
        mask=row_ok[:, None],
    )


def backward(do, q, k, v, o, lse, cu_q, cu_k, max_q: int, max_k: int, causal: bool, scale: float):
    """do, q, o (total_q, H, D), k/v (total_k, Hkv, D), lse from forward() -> dq, dk, dv."""
    total_q, H, D = q.shape
    Hkv = k.shape[1]
    batch = cu_q.numel() - 1
    dq = _alloc.empty_like(q)
    dk = _alloc.empty_like(k)
    dv = _alloc.empty_like(v)
    if batch == 0 or (max_q == 0 and max_k == 0):
        return dq, dk.zero_(), dv.zero_()
    delta = _alloc.empty((total_q, H), torch.float32, q.device)
    pre_m = 64 if D <= 64 else 32
    if total_q > 0:
        _bwd_preprocess[(triton.cdiv(total_q, pre_m), H)](
            o,
            do,
            delta,
            o.stride(0),
            o.stride(1),
            do.stride(0),
            do.stride(1),
            total_q,
            H=H,
            HEAD_DIM=D,
            BLOCK_M=pre_m,
        )
    common = dict(H=H, HEAD_DIM=D, GROUP=H // Hkv, CAUSAL=causal, PRECISION=precision(q.dtype))
    inputs = (q, k, v, do, lse, delta)
    strides = (*q.stride()[:2], *k.stride()[:2], *v.stride()[:2], *do.stride()[:2])  # (token, head) of each input
    scalars = (scale, _tuning.bucket(max_q), _tuning.bucket(max_k))
    if max_k > 0:
        grid = lambda meta: (triton.cdiv(max_k, meta["BLOCK_N"]), Hkv, batch)  # noqa: E731
        _bwd_kv_kernel[grid](
            *inputs, dk, dv, cu_q, cu_k, *strides, *dk.stride()[:2], *dv.stride()[:2], *scalars, **common
        )
    if max_q > 0:
        grid = lambda meta: (triton.cdiv(max_q, meta["BLOCK_M"]), H, batch)  # noqa: E731
        _bwd_q_kernel[grid](*inputs, dq, cu_q, cu_k, *strides, *dq.stride()[:2], *scalars, **common)
    return dq, dk, dv
