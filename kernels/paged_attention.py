"""PagedAttention in Triton: decode and chunked prefill over a block-paged KV cache, plus the cache write.

Cache layout: k_cache, v_cache (num_blocks, block_size, Hkv, D); a sequence's i-th block of tokens lives at
block_tables[seq, i], anywhere in the pool and in any order. Keys are gathered token by token through the table, so
block_size need not be a power of two nor relate to the tile size.

One kernel serves decode (one query token per sequence) and chunked prefill (several): a program owns one kv head
of one sequence and a tile of BLOCK_Q query tokens x all GROUP query heads that share that kv head, flattened into
BLOCK_M = BLOCK_Q * GROUP_P rows (GROUP_P = GROUP padded to a power of two). Each K/V tile is therefore read once for
the whole group, and the group fills the tensor-core M dimension during decode (padded to 16 rows).

Split-K (flash-decoding): when sequences x kv heads x query tiles would not fill the GPU, the key range is cut into
`num_splits` partitions handled by separate programs, each writing a normalised partial output and its logsumexp;
a second kernel merges them. Without a split the kernel writes the output directly.

Causal convention (as everywhere in kernels/): the new tokens are the last query_len of seq_len keys, so query token t
(0-based in its chunk) sees keys j <= seq_len - query_len + t.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

from kernels import _alloc, _tuning

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_HEAD_DIMS = (16, 32, 64, 128, 256)
# Partitions are multiples of this many keys (a multiple of every BLOCK_N in _configs).
_GPU_PARTITION_ALIGN = 128
_PARTITION_ALIGN = 16 if _INTERPRET else _GPU_PARTITION_ALIGN
# Below this many keys per partition the merge costs more than the extra parallelism brings.
_MIN_PARTITION = 32 if _INTERPRET else 256


def _gpu_configs() -> list[triton.Config]:
    # Decode is bandwidth-bound: BLOCK_N keys per step, 3-4 stages of gathered K/V in flight. All checked offline
    # for sm_90 (ptxas) without register spills.
    return [
        triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bn, w, s in [(64, 4, 3), (64, 4, 4), (128, 8, 3), (32, 4, 4), (64, 8, 2)]
    ]


def _interp_configs() -> list[triton.Config]:
    return [triton.Config({"BLOCK_N": 16}, num_warps=4, num_stages=1)]


def _configs() -> list[triton.Config]:
    return _interp_configs() if _INTERPRET else _gpu_configs()


@triton.jit
def _attn_tiles(
    acc,
    l_i,
    m_i,
    q,
    KC,
    VC,
    BT_row,
    stride_kb,
    stride_ks,
    stride_vb,
    stride_vs,
    offs_n,
    offs_d,
    tok_pos,
    lo,
    hi,
    ctx,
    qk_scale,
    MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # KC, VC point at kv head 0 of this program's kv head (head offset folded in); tok_pos (BLOCK_M,) is the
    # last visible key of each row.
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if MASK:
            col_ok = cols < ctx
            blk = tl.load(BT_row + cols // BLOCK_SIZE, mask=col_ok, other=0).to(tl.int64)
        else:
            blk = tl.load(BT_row + cols // BLOCK_SIZE).to(tl.int64)
        slot = cols % BLOCK_SIZE
        k_ptrs = KC + (blk * stride_kb + slot * stride_ks)[None, :] + offs_d[:, None]  # (D, BLOCK_N)
        v_ptrs = VC + (blk * stride_vb + slot * stride_vs)[:, None] + offs_d[None, :]  # (BLOCK_N, D)
        if MASK:
            k = tl.load(k_ptrs, mask=col_ok[None, :], other=0.0)
        else:
            k = tl.load(k_ptrs)
        qk = tl.dot(q, k.to(q.dtype), input_precision=PRECISION)
        if MASK:
            keep = col_ok[None, :]
            if CAUSAL:
                keep = keep & (cols[None, :] <= tok_pos[:, None])
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
            v = tl.load(v_ptrs, mask=col_ok[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs)
        acc = tl.dot(p.to(q.dtype), v.to(q.dtype), acc, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@_tuning.autotune(
    configs=_configs(),
    key=["TUNE_CTX", "TUNE_PROGRAMS", "HEAD_DIM", "GROUP_P", "BLOCK_Q", "BLOCK_SIZE", "SPLIT", "PRECISION"],
)
@triton.jit
def _paged_attn_kernel(
    Q,
    KC,
    VC,
    O,
    O_PART,
    LSE_PART,
    BT,
    SEQ_LENS,
    CU_Q,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_bt,
    partition,
    num_splits,
    sm_scale,
    TUNE_CTX,
    TUNE_PROGRAMS,
    H: tl.constexpr,
    HKV: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_P: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    DECODE: tl.constexpr,
    CAUSAL: tl.constexpr,
    SPLIT: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # BLOCK_M == BLOCK_Q * GROUP_P rows: BLOCK_Q query tokens x the GROUP_P heads of one kv head.
    seq = tl.program_id(0) // HKV
    kvh = tl.program_id(0) % HKV
    qb = tl.program_id(1)
    split = tl.program_id(2)
    if DECODE:
        q_start = seq
        q_len = 1
    else:
        q_start = tl.load(CU_Q + seq)
        q_len = tl.load(CU_Q + seq + 1) - q_start
    tq0 = qb * BLOCK_Q
    if tq0 >= q_len:
        return
    ctx = tl.load(SEQ_LENS + seq)

    offs_r = tl.arange(0, BLOCK_M)
    tok = tq0 + offs_r // GROUP_P  # query token of each row, within the chunk
    g = offs_r % GROUP_P
    row_ok = (tok < q_len) & (g < GROUP)
    head = kvh * GROUP + g
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    q_rows = (q_start + tok).to(tl.int64) * stride_qt + head * stride_qh
    q = tl.load(Q + q_rows[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0)

    first_key = ctx - q_len  # key index seen by query token 0 as its last
    tok_pos = first_key + tok
    if CAUSAL:
        hi = tl.maximum(tl.minimum(ctx, first_key + tq0 + BLOCK_Q), 0)
        full = tl.maximum(first_key + tq0 + 1, 0) // BLOCK_N * BLOCK_N  # keys every row sees
    else:
        hi = ctx
        full = ctx // BLOCK_N * BLOCK_N
    full = tl.minimum(full, ctx // BLOCK_N * BLOCK_N)
    lo = split * partition
    hi = tl.minimum(hi, lo + partition)
    full = tl.minimum(tl.maximum(full, lo), tl.maximum(hi, lo))

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - 1.0e38  # finite floor: empty rows stay NaN-free
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    BT_row = BT + seq.to(tl.int64) * stride_bt
    KCh = KC + kvh * stride_kh
    VCh = VC + kvh * stride_vh
    qk_scale = sm_scale * 1.4426950408889634
    acc, l_i, m_i = _attn_tiles(
        acc,
        l_i,
        m_i,
        q,
        KCh,
        VCh,
        BT_row,
        stride_kb,
        stride_ks,
        stride_vb,
        stride_vs,
        offs_n,
        offs_d,
        tok_pos,
        lo,
        full,
        ctx,
        qk_scale,
        False,
        CAUSAL,
        BLOCK_SIZE,
        BLOCK_N,
        PRECISION,
    )
    acc, l_i, m_i = _attn_tiles(
        acc,
        l_i,
        m_i,
        q,
        KCh,
        VCh,
        BT_row,
        stride_kb,
        stride_ks,
        stride_vb,
        stride_vs,
        offs_n,
        offs_d,
        tok_pos,
        full,
        hi,
        ctx,
        qk_scale,
        True,
        CAUSAL,
        BLOCK_SIZE,
        BLOCK_N,
        PRECISION,
    )

    seen = l_i > 0.0
    acc = acc / tl.where(seen, l_i, 1.0)[:, None]
    rows = (q_start + tok).to(tl.int64)
    if SPLIT:
        # Partials: (total_q, H, num_splits, D) normalised outputs and (total_q, H, num_splits) logsumexp.
        part = (rows * H + head) * num_splits + split
        lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
        tl.store(LSE_PART + part, lse, mask=row_ok)
        tl.store(O_PART + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=row_ok[:, None])
    else:
        o_ptrs = O + (rows * stride_ot + head * stride_oh)[:, None] + offs_d[None, :]
        tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _merge_splits_kernel(
    O,
    O_PART,
    LSE_PART,
    stride_ot,
    stride_oh,
    num_splits,
    H: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    t = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    s_ok = offs_s < num_splits
    base = (t.to(tl.int64) * H + h) * num_splits
    lse = tl.load(LSE_PART + base + offs_s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)  # every partition empty: all weights 0, output 0
    w = tl.math.exp2(lse - m)  # empty partitions (lse = -inf) weigh 0
    part = tl.load(O_PART + (base + offs_s)[:, None] * HEAD_DIM + offs_d[None, :], mask=s_ok[:, None], other=0.0)
    den = tl.sum(w, 0)
    o = tl.sum(part * w[:, None], 0) / tl.where(den > 0.0, den, 1.0)
    tl.store(O + t.to(tl.int64) * stride_ot + h * stride_oh + offs_d, o.to(O.dtype.element_ty))


@triton.jit
def _write_kv_kernel(
    K,
    V,
    KC,
    VC,
    SLOTS,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kcb,
    stride_kcs,
    stride_kch,
    stride_vcb,
    stride_vcs,
    stride_vch,
    block_size,
    HKV: tl.constexpr,
    HKV_P: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    i = tl.program_id(0)
    slot = tl.load(SLOTS + i).to(tl.int64)
    if slot < 0:  # padding token
        return
    blk = slot // block_size
    off = slot % block_size
    offs_h = tl.arange(0, HKV_P)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = (offs_h < HKV)[:, None]
    src = offs_h[:, None] * stride_kh + offs_d[None, :]
    k = tl.load(K + i.to(tl.int64) * stride_kt + src, mask=ok)
    v = tl.load(V + i.to(tl.int64) * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=ok)
    tl.store(
        KC + blk * stride_kcb + off * stride_kcs + offs_h[:, None] * stride_kch + offs_d[None, :],
        k.to(KC.dtype.element_ty),
        mask=ok,
    )
    tl.store(
        VC + blk * stride_vcb + off * stride_vcs + offs_h[:, None] * stride_vch + offs_d[None, :],
        v.to(VC.dtype.element_ty),
        mask=ok,
    )


# ----------------------------------------------------------------------------------------------------------------
# host side


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_programs_target(device: torch.device) -> int:
    # Two waves of programs per SM keep the memory system busy; under the interpreter pretend to a tiny GPU so the
    # split path is exercised by small tests.
    if device.type != "cuda":
        return 8
    return 2 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _split_plan(programs: int, max_ctx: int, device: torch.device, num_splits: int | None) -> tuple[int, int]:
    """(num_splits, partition): cut up to max_ctx keys into partitions when `programs` alone would not fill the GPU."""
    max_ctx = max(max_ctx, 1)
    if num_splits is None:
        target = _num_programs_target(device)
        num_splits = 1 if programs >= target else min(triton.cdiv(target, programs), max(1, max_ctx // _MIN_PARTITION))
    partition = triton.cdiv(triton.cdiv(max_ctx, max(1, int(num_splits))), _PARTITION_ALIGN) * _PARTITION_ALIGN
    return triton.cdiv(max_ctx, partition), partition


def _bucket(n: int) -> int:
    return max(16, triton.next_power_of_2(int(n)))


def _check(q, k_cache, v_cache, block_tables, seq_lens) -> None:
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"expected q (tokens, H, D) and caches (num_blocks, block_size, Hkv, D); got {tuple(q.shape)}, {tuple(k_cache.shape)}"
        )
    if q.shape[-1] not in _HEAD_DIMS or k_cache.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"head dim must be one of {_HEAD_DIMS} and match the cache; got {q.shape[-1]}, {k_cache.shape[-1]}"
        )
    if k_cache.shape[2] == 0 or q.shape[1] % k_cache.shape[2] != 0:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of cache heads ({k_cache.shape[2]})")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"paged attention supports float16, bfloat16 and float32 queries; got {q.dtype}")
    if block_tables.dim() != 2 or seq_lens.dim() != 1 or block_tables.shape[0] != seq_lens.shape[0]:
        raise ValueError(
            f"expected block_tables (N, max_blocks) and seq_lens (N,); got {tuple(block_tables.shape)}, {tuple(seq_lens.shape)}"
        )


def _run(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    cu_q,
    max_q: int,
    decode: bool,
    causal: bool,
    softmax_scale: float | None,
    num_splits: int | None,
) -> torch.Tensor:
    _check(q, k_cache, v_cache, block_tables, seq_lens)
    total_q, H, D = q.shape
    N = seq_lens.shape[0]
    _, block_size, Hkv, _ = k_cache.shape
    group = H // Hkv
    group_p = triton.next_power_of_2(group)
    o = _alloc.empty_like(q)
    if total_q == 0 or N == 0:
        return o
    q = q if q.stride(-1) == 1 else q.contiguous()
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache must be contiguous in the head dim")
    block_tables = block_tables.to(torch.int32)
    block_tables = block_tables if block_tables.stride(-1) == 1 else block_tables.contiguous()
    seq_lens = seq_lens.to(device=q.device, dtype=torch.int32).contiguous()
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(D)

    # Rows per program: the whole group, padded to 16 (tl.dot's minimum) for decode, ~64 for prefill.
    rows = max(16, group_p) if decode else max(16 if _INTERPRET else 64, group_p)
    block_q = rows // group_p
    n_qblocks = 1 if decode else triton.cdiv(max_q, block_q)
    max_ctx = block_tables.shape[1] * block_size  # an upper bound known without a device sync
    splits, partition = _split_plan(N * Hkv * n_qblocks, max_ctx, q.device, num_splits)
    split = splits > 1
    if split:
        o_part = _alloc.empty((total_q, H, splits, D), torch.float32, q.device)
        lse_part = _alloc.empty((total_q, H, splits), torch.float32, q.device)
    else:
        o_part = lse_part = o  # unused
    _paged_attn_kernel[(N * Hkv, n_qblocks, splits)](
        q,
        k_cache,
        v_cache,
        o,
        o_part,
        lse_part,
        block_tables,
        seq_lens,
        cu_q,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        o.stride(0),
        o.stride(1),
        block_tables.stride(0),
        partition,
        splits,
        scale,
        _bucket(max_ctx),
        _bucket(N * Hkv * n_qblocks * splits),
        H=H,
        HKV=Hkv,
        HEAD_DIM=D,
        GROUP=group,
        GROUP_P=group_p,
        BLOCK_Q=block_q,
        BLOCK_SIZE=block_size,
        DECODE=decode,
        CAUSAL=causal,
        SPLIT=split,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        BLOCK_M=rows,
    )
    if split:
        _merge_splits_kernel[(total_q, H)](
            o,
            o_part,
            lse_part,
            o.stride(0),
            o.stride(1),
            splits,
            H=H,
            HEAD_DIM=D,
            BLOCK_S=max(2, triton.next_power_of_2(splits)),
            num_warps=4 if D >= 128 else 2,
        )
    return o


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    softmax_scale: float | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Decode: q (N, H, D), the last token of each sequence, over its seq_lens[i] cached keys -> (N, H, D).

    num_splits overrides the split-K heuristic (tests and benchmarks).
    """
    if q.dim() == 3 and q.shape[0] != seq_lens.shape[0]:
        raise ValueError(f"decode takes one query per sequence: q has {q.shape[0]} rows, seq_lens {seq_lens.shape[0]}")
    return _run(q, k_cache, v_cache, block_tables, seq_lens, seq_lens, 1, True, True, softmax_scale, num_splits)


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    max_seqlen_q: int | None = None,
    causal: bool = True,
    softmax_scale: float | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Chunked prefill: q (total_q, H, D) packs the new tokens of each sequence (cu_seqlens_q (N + 1,) int32); their
    keys are already cached, seq_lens counts prefix + new tokens. -> (total_q, H, D)."""
    if cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape[0] != seq_lens.shape[0] + 1:
        raise ValueError(f"cu_seqlens_q must be (N + 1,) = ({seq_lens.shape[0] + 1},); got {tuple(cu_seqlens_q.shape)}")
    cu_q = cu_seqlens_q.to(device=q.device, dtype=torch.int32).contiguous()
    if max_seqlen_q is None:
        max_seqlen_q = int((cu_q[1:] - cu_q[:-1]).max().item()) if cu_q.numel() > 1 else 0
    if max_seqlen_q == 0:
        return _alloc.empty_like(q)
    return _run(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        cu_q,
        int(max_seqlen_q),
        False,
        bool(causal),
        softmax_scale,
        num_splits,
    )


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """k/v (N, Hkv, D) into k_cache/v_cache (num_blocks, block_size, Hkv, D) at slot_mapping (N,), in place;
    slot = block * block_size + offset, negative slots skipped."""
    if k.dim() != 3 or v.shape != k.shape or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"expected k, v (N, Hkv, D) and caches (num_blocks, block_size, Hkv, D); got {tuple(k.shape)}, {tuple(k_cache.shape)}"
        )
    if k.shape[1:] != k_cache.shape[2:]:
        raise ValueError(
            f"k/v heads and head dim {tuple(k.shape[1:])} do not match the cache {tuple(k_cache.shape[2:])}"
        )
    if slot_mapping.shape != (k.shape[0],):
        raise ValueError(f"slot_mapping must be ({k.shape[0]},); got {tuple(slot_mapping.shape)}")
    N, Hkv, D = k.shape
    if N == 0:
        return
    if D not in _HEAD_DIMS:
        raise ValueError(f"head dim must be one of {_HEAD_DIMS}; got {D}")
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache must be contiguous in the head dim")
    slots = slot_mapping.to(device=k.device).contiguous()
    _write_kv_kernel[(N,)](
        k,
        v,
        k_cache,
        v_cache,
        slots,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        k_cache.shape[1],
        HKV=Hkv,
        HKV_P=triton.next_power_of_2(Hkv),
        HEAD_DIM=D,
        num_warps=1 if Hkv * D <= 512 else 4,
    )
