"""Plain-torch references for every kernel in kernels/, with the same signatures.

They are the ground truth for the Triton tests (run in float64 there) and the CPU execution path chosen by the
dispatch in kernels/ops.py. They favour clarity over speed but avoid Python loops over tokens: the T x S score
matrix is materialised here, which is fine for the CPU path and small test shapes.

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
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # rows with no visible key
    p = torch.exp(s - m)
    l = p.sum(dim=-1, keepdim=True)
    p = p / torch.where(l > 0, l, torch.ones_like(l))
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
        raise ValueError(f"expected q (B, T, H, D) and k, v (B, S, Hkv, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
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
        raise ValueError(f"expected q (total_q, H, D) and k, v (total_k, Hkv, D); got {tuple(q.shape)}, {tuple(k.shape)}")
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
    """Decode: q (N, H, D), one token per sequence, attending to all seq_lens[i] cached keys -> (N, H, D)."""
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(f"expected q (N, H, D) and caches (num_blocks, block_size, Hkv, D); got {tuple(q.shape)}, {tuple(k_cache.shape)}")
    _check_heads(q.shape[1], k_cache.shape[2])
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    out = torch.zeros(q.shape, dtype=_acc_dtype(q.dtype), device=q.device)
    for i, n in enumerate(seq_lens.tolist()):
        if n == 0:
            continue
        k = _gather_paged(k_cache, block_tables[i], n)
        v = _gather_paged(v_cache, block_tables[i], n)
        out[i] = _attend(q[i : i + 1], k, v, None, scale)[0]
    return out.to(q.dtype)


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
        raise ValueError(f"expected q (total_q, H, D) and caches (num_blocks, block_size, Hkv, D); got {tuple(q.shape)}, {tuple(k_cache.shape)}")
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
        raise ValueError(f"expected k, v (N, Hkv, D) and caches (num_blocks, block_size, Hkv, D); got {tuple(k.shape)}, {tuple(k_cache.shape)}")
    if k.shape[1:] != k_cache.shape[2:]:
        raise ValueError(f"k/v heads and head dim {tuple(k.shape[1:])} do not match the cache {tuple(k_cache.shape[2:])}")
    slots = slot_mapping.long()
    keep = slots >= 0
    nb, bs = k_cache.shape[:2]
    blk, off = slots[keep] // bs, slots[keep] % bs
    k_cache[blk, off] = k[keep].to(k_cache.dtype)
    v_cache[blk, off] = v[keep].to(v_cache.dtype)


def pq_adc_topk(lut: torch.Tensor, codes: torch.Tensor, k: int, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
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
    """Mixture-of-experts SwiGLU FFN, the obvious per-expert loop.

    x (T, d); w_gate, w_up (E, F, d) and w_down (E, d, F) in nn.Linear layout (out, in); topk_weights (T, topk) float,
    topk_ids (T, topk) int -> out (T, d) = sum_k w[t, k] * down_e(silu(gate_e(x_t)) * up_e(x_t)), e = topk_ids[t, k].
    """
    if x.dim() != 2 or w_gate.dim() != 3 or w_up.shape != w_gate.shape or w_down.dim() != 3:
        raise ValueError(f"expected x (T, d), w_gate/w_up (E, F, d), w_down (E, d, F); got {tuple(x.shape)}, {tuple(w_gate.shape)}, {tuple(w_down.shape)}")
    E, Fdim, d = w_gate.shape
    if w_down.shape != (E, d, Fdim) or x.shape[1] != d:
        raise ValueError(f"w_down must be (E, d, F) = {(E, d, Fdim)} and x (T, {d}); got {tuple(w_down.shape)}, {tuple(x.shape)}")
    acc = _acc_dtype(x.dtype)
    out = torch.zeros(x.shape, dtype=acc, device=x.device)
    ids = topk_ids.long()
    for e in range(E):
        tok, slot = (ids == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        xe = x[tok].to(acc)
        h = F.silu(xe @ w_gate[e].to(acc).T) * (xe @ w_up[e].to(acc).T)
        y = h @ w_down[e].to(acc).T
        out.index_add_(0, tok, y * topk_weights[tok, slot].to(acc)[:, None])
    return out.to(x.dtype)
