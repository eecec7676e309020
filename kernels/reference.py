"""Plain-torch references for every kernel in kernels/, with the same signatures.

They are the ground truth for the Triton tests (run in float64 there) and the CPU execution path chosen by the
dispatch in kernels/ops.py. They favour clarity over speed but avoid Python loops over tokens: the T x S score
matrix is materialised here, which is fine for the CPU path and small test shapes. The two that run on every CPU
decode step are batched so that a step costs a few dozen tensor ops whatever the batch: paged_attention over
sequences (one padded gather, a loop over KV heads only), fused_moe over tokens (one sort, a loop over experts).
The prefill references still loop over sequences: each one's T x S work dwarfs the loop, and padding T across
sequences would cost B x T_max x S_max memory.

Conventions shared with the kernels:
- causal masks are aligned to the bottom right: with T queries over S keys, query i sees keys j <= i + S - T;
- a query row that sees no key at all (causal with S < T, or an empty sequence) outputs zeros;
- accumulation is done in float32 (or float64 when the inputs are float64), outputs have the dtype of q.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    l = p.sum(dim=-1, keepdim=True)
    return p / torch.where(l > 0, l, torch.ones_like(l))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Masked softmax attention for one group of heads.

    q (T, H, D), k/v (S, Hkv, D), mask (T, S) bool (True = visible) or None -> (T, H, D) in the accumulation dtype.
    """
    T, H, D = q.shape
    S, Hkv, _ = k.shape
    group = H // Hkv
    acc = _acc_dtype(q.dtype)
    qf = q.to(acc).view(T, Hkv, group, D)
    s = torch.einsum("tkgd,skd->kgts", qf, k.to(acc)) * scale  # (Hkv, group, T, S)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = _softmax_rows(s)
    o = torch.einsum("kgts,skd->tkgd", p, v.to(acc))
    return o.reshape(T, H, D)


def _causal_mask(T: int, S: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(S, device=device)[None, :]
    return j <= i + (S - T)  # (T, S), bottom-right aligned


def _check_heads(H: int, Hkv: int) -> None:
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"query heads ({H}) must be a multiple of key/value heads ({Hkv})")


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, softmax_scale: float | None = None
) -> torch.Tensor:
    """q (B, T, H, D), k/v (B, S, Hkv, D) -> o (B, T, H, D). Differentiable through plain autograd."""
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(
            f"expected q (B, T, H, D) and k, v (B, S, Hkv, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, T, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    _check_heads(H, Hkv)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    acc = _acc_dtype(q.dtype)
    group = H // Hkv
    qf = q.to(acc).view(B, T, Hkv, group, D)
    s = torch.einsum("btkgd,bskd->bkgts", qf, k.to(acc)) * scale  # (B, Hkv, group, T, S)
    if causal:
        s = s.masked_fill(~_causal_mask(T, S, q.device), float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    p = torch.exp(s - m)
    l = p.sum(dim=-1, keepdim=True)
    p = p / torch.where(l > 0, l, torch.ones_like(l))
    o = torch.einsum("bkgts,bskd->btkgd", p, v.to(acc))
    return o.reshape(B, T, H, D).to(q.dtype)


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
    _check_heads(q.shape[1], k.shape[1])
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
    if len(cq) != len(ck):
        raise ValueError("cu_seqlens_q and cu_seqlens_k must have the same length (batch + 1)")
    out = torch.zeros(q.shape, dtype=_acc_dtype(q.dtype), device=q.device)
    for b in range(len(cq) - 1):
        T, S = cq[b + 1] - cq[b], ck[b + 1] - ck[b]
        if T == 0:
            continue
        mask = _causal_mask(T, S, q.device) if causal else None
        out[cq[b] : cq[b + 1]] = _attend(q[cq[b] : cq[b + 1]], k[ck[b] : ck[b + 1]], v[ck[b] : ck[b + 1]], mask, scale)
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
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"expected q (N, H, D) and caches (num_blocks, block_size, Hkv, D); got {tuple(q.shape)}, {tuple(k_cache.shape)}"
        )
    _check_heads(q.shape[1], k_cache.shape[2])
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
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
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"expected q (total_q, H, D) and caches (num_blocks, block_size, Hkv, D); got {tuple(q.shape)}, {tuple(k_cache.shape)}"
        )
    _check_heads(q.shape[1], k_cache.shape[2])
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    cq = cu_seqlens_q.tolist()
    lens = seq_lens.tolist()
    if len(cq) != len(lens) + 1:
        raise ValueError(f"cu_seqlens_q must have len(seq_lens) + 1 = {len(lens) + 1} entries, got {len(cq)}")
    out = torch.zeros(q.shape, dtype=_acc_dtype(q.dtype), device=q.device)
    for i, n in enumerate(lens):
        T = cq[i + 1] - cq[i]
        if T == 0:
            continue
        if T > n:
            raise ValueError(f"sequence {i}: query_len {T} exceeds seq_len {n} (seq_lens must include the new tokens)")
        k = _gather_paged(k_cache, block_tables[i], n)
        v = _gather_paged(v_cache, block_tables[i], n)
        mask = _causal_mask(T, n, q.device) if causal else None
        out[cq[i] : cq[i + 1]] = _attend(q[cq[i] : cq[i + 1]], k, v, mask, scale)
    return out.to(q.dtype)


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """k/v (N, Hkv, D) into caches (num_blocks, block_size, Hkv, D) at slot = block * block_size + offset, in place.

    Negative slots (padding tokens) are skipped.
    """
    if k.dim() != 3 or v.shape != k.shape or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"expected k, v (N, Hkv, D) and caches (num_blocks, block_size, Hkv, D); got {tuple(k.shape)}, {tuple(k_cache.shape)}"
        )
    if k.shape[1:] != k_cache.shape[2:]:
        raise ValueError(
            f"k/v heads and head dim {tuple(k.shape[1:])} do not match the cache {tuple(k_cache.shape[2:])}"
        )
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
    lut: torch.Tensor, codes: torch.Tensor, k: int, chunk: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest dist[q, i] = sum_j lut[q, j, codes[i, j]].

    lut (nq, m, ksub) float, codes (n, m) uint8 -> values (nq, k) ascending (float32, float64 if lut is float64),
    indices (nq, k) int64; +inf / -1 padding when n < k. Scans codes in chunks so memory stays O(nq * (chunk + k)).
    """
    if lut.dim() != 3 or codes.dim() != 2 or codes.shape[1] != lut.shape[1]:
        raise ValueError(f"expected lut (nq, m, ksub) and codes (n, m); got {tuple(lut.shape)}, {tuple(codes.shape)}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    nq, m, ksub = lut.shape
    n = codes.shape[0]
    vdt = torch.float64 if lut.dtype == torch.float64 else torch.float32
    best_v = torch.full((nq, k), float("inf"), dtype=vdt, device=lut.device)
    best_i = torch.full((nq, k), -1, dtype=torch.int64, device=lut.device)
    lutf = lut.to(vdt)
    sub = torch.arange(m, device=lut.device) * ksub  # offset of each sub-quantizer's table
    flat = lutf.reshape(nq, m * ksub)
    for start in range(0, n, chunk):
        c = codes[start : start + chunk].long() + sub  # (nc, m) indices into flat
        d = flat[:, c].sum(dim=-1)  # (nq, nc)
        idx = torch.arange(start, start + c.shape[0], device=lut.device).expand(nq, -1)
        allv = torch.cat([best_v, d], dim=1)
        alli = torch.cat([best_i, idx], dim=1)
        kk = min(k, allv.shape[1])
        v_, pos = torch.topk(allv, kk, dim=1, largest=False, sorted=True)
        best_v[:, :kk], best_i[:, :kk] = v_, alli.gather(1, pos)
    return best_v, best_i


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
    if x.dim() != 2 or w_gate.dim() != 3 or w_up.shape != w_gate.shape or w_down.dim() != 3:
        raise ValueError(
            f"expected x (T, d), w_gate/w_up (E, F, d), w_down (E, d, F); got {tuple(x.shape)}, {tuple(w_gate.shape)}, {tuple(w_down.shape)}"
        )
    E, Fdim, d = w_gate.shape
    if w_down.shape != (E, d, Fdim) or x.shape[1] != d:
        raise ValueError(
            f"w_down must be (E, d, F) = {(E, d, Fdim)} and x (T, {d}); got {tuple(w_down.shape)}, {tuple(x.shape)}"
        )
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
