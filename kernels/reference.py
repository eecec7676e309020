"""Plain-torch references for every kernel in kernels/, with the same signatures.

They are the ground truth for the Triton tests (run in float64 there) and the CPU execution path chosen by the
dispatch in kernels/ops.py, which has checked the arguments (kernels/checks.py) before they get here. They favour
clarity over speed but avoid Python loops over tokens: the T x S score matrix is materialised here, which is fine for
the CPU path and small test shapes. The two that run on every CPU decode step are batched so that a step costs a few
dozen tensor ops whatever the batch: paged_attention over sequences (one padded gather, a loop over KV heads only),
fused_moe over tokens (one sort, a loop over experts). The prefill references still loop over sequences: each one's
T x S work dwarfs the loop, and padding T across sequences would cost B x T_max x S_max memory. pq_adc_topk is the
exception to "slow on purpose": it is retrieval's CPU search path, a blocked embedding_bag scan.

Conventions shared with the kernels:
- causal masks are aligned to the bottom right: with T queries over S keys, query i sees keys j <= i + S - T;
- a query row that sees no key at all (causal with S < T, or an empty sequence) outputs zeros;
- accumulation is done in float32 (or float64 when the inputs are float64), outputs have the dtype of q.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import checks

__all__ = [
    "flash_attention",
    "flash_attention_varlen",
    "paged_attention",
    "paged_prefill_attention",
    "write_kv",
    "pq_adc_topk",
    "fused_moe",
]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _softmax_rows(s: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim of scores where masked keys are already -inf; a row with no visible key -> zeros."""
    # The shift m cancels out of the softmax: detached, autograd does not differentiate through the max.
    m = s.amax(dim=-1, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    l = p.sum(dim=-1, keepdim=True)
    return p / torch.where(l > 0, l, torch.ones_like(l))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Masked softmax attention over a batch of sequences of equal lengths.

    q (B, T, H, D), k/v (B, S, Hkv, D), mask (T, S) bool (True = visible) or None -> (B, T, H, D) in the
    accumulation dtype.
    """
    B, T, H, D = q.shape
    Hkv = k.shape[2]
    group = H // Hkv
    acc = _acc_dtype(q.dtype)
    qf = q.to(acc).reshape(B, T, Hkv, group, D)  # GQA: query heads h*group .. h*group+group-1 read kv head h
    s = torch.einsum("btkgd,bskd->bkgts", qf, k.to(acc)) * scale  # (B, Hkv, group, T, S)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = _softmax_rows(s)
    o = torch.einsum("bkgts,bskd->btkgd", p, v.to(acc))
    return o.reshape(B, T, H, D)


def _causal_mask(T: int, S: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(S, device=device)[None, :]
    return j <= i + (S - T)  # (T, S), bottom-right aligned


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, softmax_scale: float | None = None
) -> torch.Tensor:
    """q (B, T, H, D), k/v (B, S, Hkv, D) -> o (B, T, H, D). Differentiable through plain autograd."""
    T, S, D = q.shape[1], k.shape[1], q.shape[-1]
    mask = _causal_mask(T, S, q.device) if causal else None
    return _attend(q, k, v, mask, checks.softmax_scale(softmax_scale, D)).to(q.dtype)


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
    """Packed sequences: q (total_q, H, D), k/v (total_k, Hkv, D), cu_seqlens (batch + 1,) int32 -> (total_q, H, D).

    max_seqlen_* are accepted for the signature's sake: the lengths are read on the host here anyway.
    """
    scale = checks.softmax_scale(softmax_scale, q.shape[-1])
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
    out = torch.zeros(q.shape, dtype=_acc_dtype(q.dtype), device=q.device)
    for b in range(len(cq) - 1):
        T, S = cq[b + 1] - cq[b], ck[b + 1] - ck[b]
        if T == 0:
            continue
        mask = _causal_mask(T, S, q.device) if causal else None
        qs, ks = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        out[qs] = _attend(q[None, qs], k[None, ks], v[None, ks], mask, scale)[0]
    return out.to(q.dtype)


def _gather_paged(cache: torch.Tensor, table_row: torch.Tensor, n: int) -> torch.Tensor:
    """The first n tokens of one sequence from a paged cache (num_blocks, block_size, Hkv, D) -> (n, Hkv, D)."""
    bs = cache.shape[1]
    nblk = (n + bs - 1) // bs
    blocks = cache[table_row[:nblk].long()]  # (nblk, bs, Hkv, D)
    return blocks.reshape(nblk * bs, *cache.shape[2:])[:n]


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Decode: q (N, H, D), one token per sequence, attending to all seq_lens[i] cached keys -> (N, H, D).

    Batched over sequences, since this runs once per layer per decode step on the CPU path: the first nblk blocks
    of every sequence are gathered in one index_select into (N, S, Hkv, D), S = nblk * block_size padded to the
    longest sequence, and slots j >= seq_lens[i] are masked out. A loop over sequences made that N small attention
    calls per layer instead. Padding costs at most N x (S_max + block_size) x Hkv x D per K and V.
    """
    scale = checks.softmax_scale(softmax_scale, q.shape[-1])
    N, H, D = q.shape
    bs, Hkv = k_cache.shape[1], k_cache.shape[2]
    group = H // Hkv
    acc = _acc_dtype(q.dtype)
    max_len = int(seq_lens.max()) if N else 0  # one host read: the gather width must be a Python int
    if max_len == 0:
        return torch.zeros_like(q)
    nblk = (max_len + bs - 1) // bs
    S = nblk * bs
    # Table entries past a sequence's last block are not read by the kernels, so callers may leave anything there
    # (-1, stale ids); point them at block 0, whose slots the mask below hides.
    used = torch.arange(nblk, device=q.device)[None, :] * bs < seq_lens[:, None]  # (N, nblk)
    blocks = torch.where(used, block_tables[:, :nblk].long(), 0).reshape(-1)  # (N * nblk,)
    # index_select, not cache[table]: the same copy, several times faster than advanced indexing on CPU.
    k = k_cache.index_select(0, blocks).view(N, S, Hkv, D).to(acc)
    v = v_cache.index_select(0, blocks).view(N, S, Hkv, D).to(acc)
    visible = torch.arange(S, device=q.device)[None, :] < seq_lens[:, None]  # (N, S)
    # Slots past a sequence's end hold anything (a freed sequence's tokens, NaN in an uninitialised pool): their
    # probability is exactly 0, but 0 * NaN is NaN, so zero those V rows. K needs nothing: its scores are masked.
    v.view(N * S, Hkv * D).index_fill_(0, (~visible).view(-1).nonzero().squeeze(1), 0)
    qg = q.to(acc).view(N, Hkv, group, D)  # GQA: query heads h*group .. h*group+group-1 read kv head h
    out = torch.empty(N, Hkv, group, D, dtype=acc, device=q.device)
    for h in range(Hkv):
        # k[:, :, h] is a strided (N, S, D) view that bmm reads in place; an einsum over all heads at once would
        # first copy K and V into head-major layout, which costs more than the matmuls.
        s = torch.bmm(qg[:, h], k[:, :, h].transpose(1, 2)) * scale  # (N, group, S)
        p = _softmax_rows(s.masked_fill(~visible[:, None, :], float("-inf")))
        out[:, h] = torch.bmm(p, v[:, :, h])  # (N, group, D)
    return out.view(N, H, D).to(q.dtype)


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
) -> torch.Tensor:
    """Chunked prefill over a paged prefix.

    q (total_q, H, D) packs query_len[i] = cu_seqlens_q[i+1] - cu_seqlens_q[i] new tokens per sequence; their keys and
    values are already in the cache (write_kv first), so seq_lens[i] counts the cached prefix plus these tokens. Query
    token t of sequence i (0-based in its chunk) sees keys j <= seq_lens[i] - query_len[i] + t when causal, all
    seq_lens[i] keys otherwise. Decode is the case query_len == 1.
    """
    scale = checks.softmax_scale(softmax_scale, q.shape[-1])
    cq = cu_seqlens_q.tolist()
    lens = seq_lens.tolist()
    out = torch.zeros(q.shape, dtype=_acc_dtype(q.dtype), device=q.device)
    for i, n in enumerate(lens):
        T = cq[i + 1] - cq[i]
        if T == 0:
            continue
        # A data check the kernels cannot afford (a device sync); the lengths are on the host here anyway.
        if T > n:
            raise ValueError(f"sequence {i}: query_len {T} exceeds seq_len {n} (seq_lens must include the new tokens)")
        k = _gather_paged(k_cache, block_tables[i], n)
        v = _gather_paged(v_cache, block_tables[i], n)
        mask = _causal_mask(T, n, q.device) if causal else None
        out[cq[i] : cq[i + 1]] = _attend(q[None, cq[i] : cq[i + 1]], k[None], v[None], mask, scale)[0]
    return out.to(q.dtype)


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """k/v (N, Hkv, D) into caches (num_blocks, block_size, Hkv, D) at slot = block * block_size + offset, in place.

    Negative slots (padding tokens) are skipped.
    """
    slots = slot_mapping.long()
    # Filter only when there is padding (one host read): boolean-mask indexing of slots, k and v on every call cost
    # more than the writes themselves on the CPU decode path, where padding never occurs.
    if bool((slots < 0).any()):
        keep = (slots >= 0).nonzero().squeeze(1)
        slots, k, v = slots[keep], k[keep], v[keep]
    bs = k_cache.shape[1]
    blk, off = slots // bs, slots % bs
    k_cache[blk, off] = k.to(k_cache.dtype)
    v_cache[blk, off] = v.to(v_cache.dtype)


def pq_adc_topk(
    lut: torch.Tensor, codes: torch.Tensor, k: int, block: int = 1 << 16, qblock: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest dist[q, i] = sum_j lut[q, j, codes[i, j]].

    lut (nq, m, ksub) float, codes (n, m) uint8 -> values (nq, k) ascending (float32, float64 if lut is float64),
    positions (nq, k) int64; +inf / -1 padding when n < k. Queries go in blocks of `qblock` so the (m * ksub, qblock)
    table stays in cache; codes in blocks of `block` with a running top-k, so the (nq, n) distance matrix is never
    materialised.
    """
    nq, m, ksub = lut.shape
    n = codes.shape[0]
    dev = lut.device
    vdt = torch.float64 if lut.dtype == torch.float64 else torch.float32
    out_v = torch.full((nq, k), float("inf"), dtype=vdt, device=dev)
    out_i = torch.full((nq, k), -1, dtype=torch.int64, device=dev)
    offs = (torch.arange(m, device=dev, dtype=torch.int32) * ksub)[None]  # (1, m) each sub-quantizer's first row
    for qs in range(0, nq, qblock):
        lq = lut[qs : qs + qblock]
        # embedding_bag sums rows of w picked by the m offsets of each code: all queries of the block at once
        # an explicit copy: .contiguous() keeps the odd stride of a size-1 dim, which sends
        # embedding_bag down a ~30x slower path for a single query
        w = torch.empty(m * ksub, lq.shape[0], dtype=vdt, device=dev)  # (m * ksub, nqb)
        w.copy_(lq.permute(1, 2, 0).reshape(m * ksub, lq.shape[0]))
        bv, bi = out_v[qs : qs + qblock], out_i[qs : qs + qblock]
        for s in range(0, n, block):
            idx = codes[s : s + block].to(torch.int32) + offs  # (b, m)
            dist = F.embedding_bag(idx, w, mode="sum").t()  # (nqb, b)
            v, j = dist.topk(min(k, dist.shape[1]), dim=1, largest=False)  # partial top-k of the block
            # merge with the running top-k: the k smallest of both candidate sets
            cand_v, cand_i = torch.cat([bv, v], 1), torch.cat([bi, j + s], 1)
            bv, p = cand_v.topk(min(k, cand_v.shape[1]), dim=1, largest=False)
            bi = cand_i.gather(1, p)
        out_v[qs : qs + qblock, : bv.shape[1]] = bv
        out_i[qs : qs + qblock, : bi.shape[1]] = bi
    return out_v, out_i


def fused_moe(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """Mixture-of-experts SwiGLU FFN: assignments grouped by expert, then one loop over experts.

    x (T, d); w_gate, w_up (E, F, d) and w_down (E, d, F) in nn.Linear layout (out, in); topk_weights (T, topk) float,
    topk_ids (T, topk) int -> out (T, d) = sum_k w[t, k] * down_e(silu(gate_e(x_t)) * up_e(x_t)), e = topk_ids[t, k].
    Ids outside [0, E) contribute nothing.
    """
    E = w_gate.shape[0]
    acc = _acc_dtype(x.dtype)
    out = torch.zeros(x.shape, dtype=acc, device=x.device)
    topk = topk_ids.shape[1]
    ids = topk_ids.reshape(-1).long()  # (T * topk,) assignment a = t * topk + j
    ids = torch.where((ids >= 0) & (ids < E), ids, E)  # invalid ids go to a bucket E that is never run
    # One sort and one host read of the group sizes instead of a nonzero per expert: a decode step calls this once
    # per layer with a few dozen assignments, where the per-op overhead, not the matmuls, is the cost.
    order = torch.argsort(ids, stable=True)  # (T * topk,) assignments grouped by expert
    counts = torch.bincount(ids, minlength=E + 1).tolist()
    tok = order // topk  # (T * topk,) source token of each sorted assignment
    xs = x.index_select(0, tok).to(acc)  # (T * topk, d)
    ws = topk_weights.reshape(-1).index_select(0, order).to(acc)  # (T * topk,)
    start = 0
    for e in range(E):
        a, b = start, start + counts[e]
        start = b
        if a == b:
            continue
        h = F.silu(F.linear(xs[a:b], w_gate[e].to(acc))) * F.linear(xs[a:b], w_up[e].to(acc))  # (n_e, F)
        y = F.linear(h, w_down[e].to(acc))  # (n_e, d)
        out.index_add_(0, tok[a:b], y * ws[a:b, None])
    return out.to(x.dtype)
