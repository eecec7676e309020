"""FlashAttention-2 in Triton: forward, backward, dense and variable-length (packed) sequences, grouped-query heads.

Forward: one program per (query block, head, sequence). The query tile stays in registers while tiles of K and V
stream through; the softmax is computed online (running max m and sum l, in the log2 domain so exp2 is used), so
the T x S score matrix never reaches memory and memory is O(T + S). Blocks that are entirely visible run without
any mask; only the diagonal band (causal) and the ragged last key block take the masked path, and blocks entirely
above the diagonal are never visited.

Backward (FA2): the forward saves logsumexp per row; delta = rowsum(o * do) is precomputed, then one kernel
accumulates dk, dv per key block (looping over every query head of its group, so GQA needs no atomics) and a
second accumulates dq per query block. Both recompute P from q, k and the saved logsumexp.

Everything is varlen internally: the dense (B, T, H, D) entry point packs to (B*T, H, D) with uniform cu_seqlens,
a free reshape.

Causal masks are bottom-right aligned: with T queries over S keys, query i sees keys j <= i + S - T. Rows that see
no key output zeros.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from kernels import _alloc, _tuning

LOG2E = 1.4426950408889634
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_HEAD_DIMS = (16, 32, 64, 128, 256)


def _cfgs(specs: list[tuple], names: tuple[str, str]) -> list[triton.Config]:
    return [triton.Config({names[0]: a, names[1]: b}, num_warps=w, num_stages=s) for a, b, w, s in specs]


# On GPU the autotuner picks per (seqlen bucket, head dim, group, causal, dtype) among FA2-style tiles for H100-class
# parts; the lists were checked offline for sm_90 (ptxas): none exceeds shared memory and the fwd/bwd-q ones do not
# spill registers once _prune drops 4-warp tiles whose fp32 accumulator would need over 64 registers per thread.
_GPU_FWD_CONFIGS = _cfgs(
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
_GPU_BWD_KV_CONFIGS = _cfgs(
    [(128, 16, 8, 3), (128, 32, 8, 3), (64, 32, 8, 3), (128, 32, 8, 2), (64, 64, 8, 2), (64, 32, 4, 3)],
    ("BLOCK_N", "BLOCK_M"),
)
_GPU_BWD_Q_CONFIGS = _cfgs(
    [(128, 32, 8, 3), (128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3)],
    ("BLOCK_M", "BLOCK_N"),
)
# Small tiles under the interpreter: faster there, and BLOCK_M != BLOCK_N exercises the diagonal-band logic.
_INTERP_CONFIGS = _cfgs([(32, 16, 4, 1)], ("BLOCK_M", "BLOCK_N"))
_FWD_CONFIGS = _INTERP_CONFIGS if _INTERPRET else _GPU_FWD_CONFIGS
_BWD_KV_CONFIGS = _cfgs([(32, 16, 4, 1)], ("BLOCK_N", "BLOCK_M")) if _INTERPRET else _GPU_BWD_KV_CONFIGS
_BWD_Q_CONFIGS = _cfgs([(16, 32, 4, 1)], ("BLOCK_M", "BLOCK_N")) if _INTERPRET else _GPU_BWD_Q_CONFIGS


def _prune_rows(configs, named_args, **kwargs):
    # fp32 accumulator of BLOCK_M x HEAD_DIM spread over the warps: keep it within 64 registers per thread.
    d = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM", 128))
    keep = [c for c in configs if c.kwargs["BLOCK_M"] * d <= 64 * 32 * c.num_warps]
    return keep or configs[-1:]


_TUNE_KEY = ["TUNE_Q", "TUNE_K", "HEAD_DIM", "GROUP", "CAUSAL", "PRECISION"]


@triton.jit
def _seq_bounds(CU_Q, CU_K, b):
    q_start = tl.load(CU_Q + b)
    q_len = tl.load(CU_Q + b + 1) - q_start
    k_start = tl.load(CU_K + b)
    k_len = tl.load(CU_K + b + 1) - k_start
    return q_start, q_len, k_start, k_len


@triton.jit
def _fwd_tiles(
    acc,
    l_i,
    m_i,
    q,
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
    # K, V point at this sequence's first key of this kv head; m_i and scores are in the log2 domain.
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k_ptrs = K + cols[None, :] * stride_kt + offs_d[:, None]  # (D, BLOCK_N)
        v_ptrs = V + cols[:, None] * stride_vt + offs_d[None, :]  # (BLOCK_N, D)
        if MASK:
            k = tl.load(k_ptrs, mask=cols[None, :] < k_len, other=0.0)
        else:
            k = tl.load(k_ptrs)
        qk = tl.dot(q, k, input_precision=PRECISION)  # (BLOCK_M, BLOCK_N) fp32
        if MASK:
            keep = cols[None, :] < k_len
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            qk = tl.where(keep, qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            p = tl.math.exp2(qk - m_new[:, None])
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if MASK:
            v = tl.load(v_ptrs, mask=cols[:, None] < k_len, other=0.0)
        else:
            v = tl.load(v_ptrs)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@_tuning.autotune(configs=_FWD_CONFIGS, key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune_rows})
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
    q_start, q_len, k_start, k_len = _seq_bounds(CU_Q, CU_K, b)
    start_m = pid_m * BLOCK_M
    if start_m >= q_len:
        return
    kvh = h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < q_len

    q = tl.load(
        Q + (q_start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :], mask=row_ok[:, None], other=0.0
    )
    Kb = K + k_start.to(tl.int64) * stride_kt + kvh * stride_kh
    Vb = V + k_start.to(tl.int64) * stride_vt + kvh * stride_vh
    qk_scale = sm_scale * 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2e)

    diag = k_len - q_len  # query i sees keys j <= i + diag
    if CAUSAL:
        hi = tl.maximum(tl.minimum(k_len, start_m + BLOCK_M + diag), 0)
        # Keys <= start_m + diag are visible to every row of the block.
        full = tl.minimum(tl.maximum(start_m + diag + 1, 0) // BLOCK_N * BLOCK_N, k_len // BLOCK_N * BLOCK_N)
    else:
        hi = k_len
        full = k_len // BLOCK_N * BLOCK_N

    # A finite floor instead of -inf keeps rows with no visible key free of inf - inf.
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - 1.0e38
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    acc, l_i, m_i = _fwd_tiles(
        acc,
        l_i,
        m_i,
        q,
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
    acc, l_i, m_i = _fwd_tiles(
        acc,
        l_i,
        m_i,
        q,
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

    seen = l_i > 0.0
    acc = acc / tl.where(seen, l_i, 1.0)[:, None]
    # +inf logsumexp for empty rows makes the backward's exp2(s - lse) exactly 0 there.
    lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("inf"))
    tl.store(LSE + (q_start + offs_m) * H + h, lse, mask=row_ok)
    o_ptrs = O + (q_start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_ok[:, None])


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


@_tuning.autotune(configs=_BWD_KV_CONFIGS, key=_TUNE_KEY)
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
    q_start, q_len, k_start, k_len = _seq_bounds(CU_Q, CU_K, b)
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
    qk_scale = sm_scale * 1.4426950408889634

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


@_tuning.autotune(configs=_BWD_Q_CONFIGS, key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune_rows})
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
    q_start, q_len, k_start, k_len = _seq_bounds(CU_Q, CU_K, b)
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
    qk_scale = sm_scale * 1.4426950408889634

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


# ----------------------------------------------------------------------------------------------------------------
# host side


def _bucket(n: int) -> int:
    # Autotune key: a power of two, so varying lengths do not re-tune on every call.
    return max(16, triton.next_power_of_2(int(n)))


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs get exact products (the tests compare at 1e-4); fp16/bf16 ignore the setting.
    return "ieee" if dtype == torch.float32 else "tf32"


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"flash_attention supports float16, bfloat16 and float32; got {q.dtype}")
    if q.shape[-1] not in _HEAD_DIMS or k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"head dim must be one of {_HEAD_DIMS} and equal for q and k; got {q.shape[-1]}, {k.shape[-1]}"
        )
    if k.shape[-2] == 0 or q.shape[-2] % k.shape[-2] != 0:
        raise ValueError(f"query heads ({q.shape[-2]}) must be a multiple of key/value heads ({k.shape[-2]})")
    if not (q.device == k.device == v.device):
        raise ValueError("q, k, v must be on the same device")


def _forward(q, k, v, cu_q, cu_k, max_q: int, max_k: int, causal: bool, scale: float):
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
        _bucket(max_q),
        _bucket(max_k),
        H=H,
        HEAD_DIM=D,
        GROUP=H // k.shape[1],
        CAUSAL=causal,
        PRECISION=_precision(q.dtype),
    )
    return o, lse


def _backward(do, q, k, v, o, lse, cu_q, cu_k, max_q: int, max_k: int, causal: bool, scale: float):
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
    common = dict(H=H, HEAD_DIM=D, GROUP=H // Hkv, CAUSAL=causal, PRECISION=_precision(q.dtype))
    if max_k > 0:
        _bwd_kv_kernel[lambda meta: (triton.cdiv(max_k, meta["BLOCK_N"]), Hkv, batch)](
            q,
            k,
            v,
            do,
            lse,
            delta,
            dk,
            dv,
            cu_q,
            cu_k,
            q.stride(0),
            q.stride(1),
            k.stride(0),
            k.stride(1),
            v.stride(0),
            v.stride(1),
            do.stride(0),
            do.stride(1),
            dk.stride(0),
            dk.stride(1),
            dv.stride(0),
            dv.stride(1),
            scale,
            _bucket(max_q),
            _bucket(max_k),
            **common,
        )
    if max_q > 0:
        _bwd_q_kernel[lambda meta: (triton.cdiv(max_q, meta["BLOCK_M"]), H, batch)](
            q,
            k,
            v,
            do,
            lse,
            delta,
            dq,
            cu_q,
            cu_k,
            q.stride(0),
            q.stride(1),
            k.stride(0),
            k.stride(1),
            v.stride(0),
            v.stride(1),
            do.stride(0),
            do.stride(1),
            dq.stride(0),
            dq.stride(1),
            scale,
            _bucket(max_q),
            _bucket(max_k),
            **common,
        )
    return dq, dk, dv


class _FlashAttnVarlen(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, causal, scale):
        o, lse = _forward(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale)
        ctx.save_for_backward(q, k, v, o, lse, cu_q, cu_k)
        ctx.args = (max_q, max_k, causal, scale)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, cu_q, cu_k = ctx.saved_tensors
        dq, dk, dv = _backward(_last_dim_contiguous(do), q, k, v, o, lse, cu_q, cu_k, *ctx.args)
        return dq, dk, dv, None, None, None, None, None, None


def _max_len(cu: torch.Tensor) -> int:
    return int((cu[1:] - cu[:-1]).max().item()) if cu.numel() > 1 else 0


def flash_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    causal: bool = True,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Packed sequences: q (total_q, H, D), k/v (total_k, Hkv, D), cu_seqlens (batch + 1,) int32 -> (total_q, H, D)."""
    if q.dim() != 3 or k.dim() != 3 or v.shape != k.shape:
        raise ValueError(
            f"expected q (total_q, H, D) and k, v (total_k, Hkv, D); got {tuple(q.shape)}, {tuple(k.shape)}"
        )
    _check(q, k, v)
    if cu_seqlens_q.shape != cu_seqlens_k.shape or cu_seqlens_q.dim() != 1:
        raise ValueError("cu_seqlens_q and cu_seqlens_k must both be (batch + 1,)")
    cu_q = cu_seqlens_q.to(device=q.device, dtype=torch.int32).contiguous()
    cu_k = cu_seqlens_k.to(device=q.device, dtype=torch.int32).contiguous()
    max_q = _max_len(cu_q) if max_seqlen_q is None else int(max_seqlen_q)
    max_k = _max_len(cu_k) if max_seqlen_k is None else int(max_seqlen_k)
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    return _FlashAttnVarlen.apply(q, k, v, cu_q, cu_k, max_q, max_k, bool(causal), scale)


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, softmax_scale: float | None = None
) -> torch.Tensor:
    """q (B, T, H, D), k/v (B, S, Hkv, D) -> o (B, T, H, D); see the module docstring for the causal convention."""
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape or q.shape[0] != k.shape[0]:
        raise ValueError(
            f"expected q (B, T, H, D) and k, v (B, S, Hkv, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, T, H, D = q.shape
    S = k.shape[1]
    cu_q = (
        torch.arange(0, (B + 1) * T, T, device=q.device, dtype=torch.int32)
        if T > 0
        else torch.zeros(B + 1, device=q.device, dtype=torch.int32)
    )
    cu_k = (
        torch.arange(0, (B + 1) * S, S, device=q.device, dtype=torch.int32)
        if S > 0
        else torch.zeros(B + 1, device=q.device, dtype=torch.int32)
    )
    o = flash_attention_varlen(
        q.reshape(B * T, H, D),
        k.reshape(B * S, k.shape[2], D),
        v.reshape(B * S, v.shape[2], D),
        cu_q,
        cu_k,
        T,
        S,
        causal,
        softmax_scale,
    )
    return o.view(B, T, H, D)
