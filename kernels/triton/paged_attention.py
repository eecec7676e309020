"""PagedAttention in Triton: decode and chunked prefill over a block-paged KV cache (the cache write is write_kv.py).

Cache layout: k_cache, v_cache (num_blocks, block_size, Hkv, D); a sequence's i-th block of tokens lives at
block_tables[seq, i], anywhere in the pool and in any order. Keys are gathered token by token through the table, so
block_size need not be a power of two nor relate to the tile size.

One kernel serves decode (one query token per sequence) and chunked prefill (several): a program owns one kv head
of one sequence and a tile of BLOCK_Q query tokens x all GROUP query heads that share that kv head, flattened into
BLOCK_M = BLOCK_Q * GROUP_P rows (GROUP_P = GROUP padded to a power of two). Each K/V tile is therefore read once for
the whole group, and the group fills the tensor-core M dimension during decode (padded to 16 rows). The softmax is
the online one of online_softmax.py, shared with FlashAttention.

Split-K (flash-decoding, paged_split.py): when sequences x kv heads x query tiles would not fill the GPU, the key
range is cut into `num_splits` partitions handled by separate programs, each writing a normalised partial output and
its logsumexp; a second kernel merges them. Without a split the kernel writes the output directly.

Causal convention (as everywhere in kernels/): the new tokens are the last query_len of seq_len keys, so query token t
(0-based in its chunk) sees keys j <= seq_len - query_len + t.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import checks
from kernels.triton import _alloc, _tuning, paged_split
from kernels.triton._launch import (
    INTERPRET,
    last_dim_contiguous,
    precision,
    unsupported_cache,
    unsupported_dtype,
    unsupported_head_dim,
)
from kernels.triton.online_softmax import (
    log2_scale,
    online_softmax_finish,
    online_softmax_init,
    online_softmax_update,
)


def gpu_configs() -> list[triton.Config]:
    # Decode is bandwidth-bound: BLOCK_N keys per step, 3-4 stages of gathered K/V in flight. All checked offline
    # for sm_90 (ptxas) without register spills.
    return [
        triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bn, w, s in [(64, 4, 3), (64, 4, 4), (128, 8, 3), (32, 4, 4), (64, 8, 2)]
    ]


def interp_configs() -> list[triton.Config]:
    return [triton.Config({"BLOCK_N": 16}, num_warps=4, num_stages=1)]


def unsupported(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> str | None:
    """Why the kernel cannot take attention of these queries over these caches (checked arguments), or None."""
    return (
        unsupported_dtype(q.dtype, "queries")
        or unsupported_head_dim(q.shape[-1])
        or unsupported_cache(k_cache, v_cache)
    )


@triton.jit
def _attend_keys(
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
    last_key,
    lo,
    full,
    hi,
    ctx,
    qk_scale,
    CAUSAL: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # KC, VC point at this program's kv head (head offset folded in); BT_row at its sequence's block table;
    # last_key (BLOCK_M,) is the last key each row sees.
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    # Keys [lo, full) are visible to every row: no mask.
    for start_n in range(lo, full, BLOCK_N):
        cols = start_n + offs_n
        blk = tl.load(BT_row + cols // BLOCK_SIZE).to(tl.int64)
        slot = cols % BLOCK_SIZE
        k = tl.load(KC + (blk * stride_kb + slot * stride_ks)[None, :] + offs_d[:, None])  # (D, BLOCK_N)
        v = tl.load(VC + (blk * stride_vb + slot * stride_vs)[:, None] + offs_d[None, :])  # (BLOCK_N, D)
        qk = tl.dot(q, k.to(q.dtype), input_precision=PRECISION)
        acc, l_i, m_i = online_softmax_update(acc, l_i, m_i, qk, True, v.to(q.dtype), qk_scale, False, PRECISION)
    # Keys [full, hi): the causal band of the chunk and the ragged end of the sequence (or partition).
    for start_n in range(full, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < ctx
        blk = tl.load(BT_row + cols // BLOCK_SIZE, mask=col_ok, other=0).to(tl.int64)
        slot = cols % BLOCK_SIZE
        k = tl.load(
            KC + (blk * stride_kb + slot * stride_ks)[None, :] + offs_d[:, None], mask=col_ok[None, :], other=0.0
        )
        v = tl.load(
            VC + (blk * stride_vb + slot * stride_vs)[:, None] + offs_d[None, :], mask=col_ok[:, None], other=0.0
        )
        qk = tl.dot(q, k.to(q.dtype), input_precision=PRECISION)
        keep = col_ok[None, :]
        if CAUSAL:
            keep = keep & (cols[None, :] <= last_key[:, None])
        acc, l_i, m_i = online_softmax_update(acc, l_i, m_i, qk, keep, v.to(q.dtype), qk_scale, True, PRECISION)
    return acc, l_i, m_i


@_tuning.autotune(
    configs=interp_configs() if INTERPRET else gpu_configs(),
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

    BT_row = BT + seq.to(tl.int64) * stride_bt
    KCh = KC + kvh * stride_kh
    VCh = VC + kvh * stride_vh
    acc, l_i, m_i = online_softmax_init(BLOCK_M, HEAD_DIM)
    acc, l_i, m_i = _attend_keys(
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
        tok_pos,
        lo,
        full,
        hi,
        ctx,
        log2_scale(sm_scale),
        CAUSAL,
        BLOCK_SIZE,
        BLOCK_N,
        HEAD_DIM,
        PRECISION,
    )
    # -inf logsumexp for rows without keys in this partition: the merge weighs them 0.
    acc, lse = online_softmax_finish(acc, l_i, m_i, float("-inf"))
    rows = (q_start + tok).to(tl.int64)
    if SPLIT:
        # Partials: (total_q, H, num_splits, D) normalised outputs and (total_q, H, num_splits) logsumexp.
        part = (rows * H + head) * num_splits + split
        tl.store(LSE_PART + part, lse, mask=row_ok)
        tl.store(O_PART + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=row_ok[:, None])
    else:
        o_ptrs = O + (rows * stride_ot + head * stride_oh)[:, None] + offs_d[None, :]
        tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_ok[:, None])


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
    total_q, H, D = q.shape
    N = seq_lens.shape[0]
    _, block_size, Hkv, _ = k_cache.shape
    group = H // Hkv
    group_p = triton.next_power_of_2(group)
    o = _alloc.empty_like(q)
    if total_q == 0 or N == 0:
        return o
    q = last_dim_contiguous(q)
    block_tables = block_tables.to(torch.int32)
    block_tables = last_dim_contiguous(block_tables)
    seq_lens = seq_lens.to(device=q.device, dtype=torch.int32).contiguous()
    scale = checks.softmax_scale(softmax_scale, D)

    # Rows per program: the whole group, padded to 16 (tl.dot's minimum) for decode, ~64 for prefill.
    rows = max(16, group_p) if decode else max(16 if INTERPRET else 64, group_p)
    block_q = rows // group_p
    n_qblocks = 1 if decode else triton.cdiv(max_q, block_q)
    max_ctx = block_tables.shape[1] * block_size  # an upper bound known without a device sync
    splits, partition = paged_split.split_plan(N * Hkv * n_qblocks, max_ctx, q.device, num_splits)
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
        *k_cache.stride()[:3],  # block, slot, head
        *v_cache.stride()[:3],
        o.stride(0),
        o.stride(1),
        block_tables.stride(0),
        partition,
        splits,
        scale,
        _tuning.bucket(max_ctx),
        _tuning.bucket(N * Hkv * n_qblocks * splits),
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
        PRECISION=precision(q.dtype),
        BLOCK_M=rows,
    )
    if split:
        paged_split.merge(o, o_part, lse_part)
    return o


def paged_attention(q, k_cache, v_cache, block_tables, seq_lens, softmax_scale=None, num_splits=None) -> torch.Tensor:
    """Decode: q (N, H, D), the last token of each sequence, over its seq_lens[i] cached keys -> (N, H, D).

    The arguments of kernels.paged_attention, checked; num_splits overrides the split-K heuristic (tests and
    benchmarks).
    """
    return _run(q, k_cache, v_cache, block_tables, seq_lens, seq_lens, 1, True, True, softmax_scale, num_splits)


def paged_prefill_attention(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    cu_seqlens_q,
    max_seqlen_q=None,
    causal=True,
    softmax_scale=None,
    num_splits=None,
) -> torch.Tensor:
    """Chunked prefill: q (total_q, H, D) packs the new tokens of each sequence (cu_seqlens_q (N + 1,) int32); their
    keys are already cached, seq_lens counts prefix + new tokens. -> (total_q, H, D).

    The arguments of kernels.paged_prefill_attention, checked; num_splits as for paged_attention.
    """
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
