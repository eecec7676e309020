"""Plain-torch references for every kernel in kernels/, with the same signatures.

They are the ground truth for the Triton tests (run in float64 there) and the CPU execution path chosen by the
dispatch in kernels/ops.py, which has checked the arguments (kernels/checks.py) before they get here. They favour
clarity over speed but avoid Python loops over tokens. The engine's CPU paths run in the model's dtype, so that bf16
on a CPU with AMX / avx512_bf16 never round-trips the KV cache or the weights through float32: attention goes
through torch's fused scaled_dot_product_attention (a flash kernel on CPU: float32 scores, softmax and accumulation
inside, no T x S matrix), the expert GEMMs are F.linear in the input dtype. The two that run on every CPU decode
step are batched so that a step costs a few dozen tensor ops whatever the batch: paged_attention over sequences
(grouped by length, one gather + one attention call per group), fused_moe over tokens (one sort, a GEMM per
expert). The prefill references loop over sequences: each one's T x S work dwarfs the loop. `flash_attention`
(training, differentiable) materialises the scores in float32. pq_adc_topk is the exception to "slow on purpose":
it is retrieval's CPU search path, a blocked embedding_bag scan.

Conventions shared with the kernels:
- causal masks are aligned to the bottom right: with T queries over S keys, query i sees keys j <= i + S - T;
- a query row that sees no key at all (causal with S < T, or an empty sequence) outputs zeros;
- accumulation is done in float32 (or float64 when the inputs are float64), outputs have the dtype of q (bf16 / fp16
  GEMM outputs are rounded to that dtype before the next op, as in transformers).
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
    out = torch.zeros_like(q)
    for b in range(len(cq) - 1):
        qs, ks = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        if cq[b + 1] > cq[b]:
            out[qs] = _attend_one(q[qs], k[ks], v[ks], causal, scale)
    return out


def _attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
    """One sequence: q (T, H, D), k/v (S, Hkv, D) -> (T, H, D) in q's dtype, causal masks bottom-right aligned.

    torch's fused scaled_dot_product_attention (on CPU a flash kernel: bf16 / fp16 inputs read as they are, scores,
    softmax and accumulation in float32, no T x S matrix) when every query row sees a key; `_attend` otherwise (rows
    that see nothing output zeros, which SDPA would make NaN).
    """
    T, S = q.shape[0], k.shape[0]
    if S == 0 or (causal and T > S):
        return _attend(q[None], k[None], v[None], _causal_mask(T, S, q.device) if causal else None, scale)[0].to(
            q.dtype
        )
    mask = _causal_mask(T, S, q.device) if causal and 1 < T < S else None  # T == S: plain is_causal
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],  # (1, H, T, D)
        k.transpose(0, 1)[None],  # (1, Hkv, S, D)
        v.transpose(0, 1)[None],
        attn_mask=mask,
        is_causal=causal and T == S and T > 1,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return o[0].transpose(0, 1)  # (T, H, D)


def _rows(cache: torch.Tensor) -> torch.Tensor:
    """A paged cache (num_blocks, block_size, Hkv, D) as (num_blocks, block_size * Hkv * D) rows: index_select on
    2-d rows copies each block in one run, ~2x faster on CPU than on the 4-d tensor."""
    return cache.flatten(1)


def _gather_paged(cache: torch.Tensor, table_row: torch.Tensor, n: int) -> torch.Tensor:
    """The first n tokens of one sequence from a paged cache (num_blocks, block_size, Hkv, D) -> (n, Hkv, D)."""
    bs = cache.shape[1]
    nblk = (n + bs - 1) // bs
    blocks = _rows(cache).index_select(0, table_row[:nblk].long())  # (nblk, bs * Hkv * D)
    return blocks.view(nblk * bs, *cache.shape[2:])[:n]


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Decode: q (N, H, D), one token per sequence, attending to all seq_lens[i] cached keys -> (N, H, D).

    This runs once per layer per decode step on the CPU path, so it is batched: the sequences are grouped by length
    (`_length_groups`: padding at most ~1/4 of a group's slots), and per group the blocks of all its sequences are
    gathered in one index_select into (G, S, Hkv, D) and attended in one fused scaled_dot_product_attention call,
    in the cache's dtype (bf16 K/V are never copied to float32; scores and softmax are float32 inside the kernel).
    GQA without copies: a KV head's `group` query heads are the query axis of an (G, Hkv, group, D) problem. One
    padded batch of all sequences gathered up to twice the K/V bytes on mixed lengths; a loop over sequences made
    N small calls per layer.
    """
    scale = checks.softmax_scale(softmax_scale, q.shape[-1])
    N, H, D = q.shape
    bs, Hkv = k_cache.shape[1], k_cache.shape[2]
    out = torch.zeros_like(q)
    lens = seq_lens.tolist()  # one host read: the group shapes must be Python ints
    for rows, nblk in _length_groups(lens, bs):
        G, S = len(rows), nblk * bs
        whole = G == N and rows == sorted(rows)  # one group in batch order (equal lengths): no row gathers
        idx = None if whole else torch.tensor(rows, device=q.device)
        tables = block_tables if idx is None else block_tables.index_select(0, idx)
        glens = seq_lens if idx is None else seq_lens.index_select(0, idx)
        # Table entries past a sequence's last block are not read by the kernels, so callers may leave anything
        # there (-1, stale ids); point them at block 0, whose slots the mask below hides.
        used = torch.arange(nblk, device=q.device)[None, :] * bs < glens[:, None]  # (G, nblk)
        blocks = torch.where(used, tables[:, :nblk].long(), 0).reshape(-1)  # (G * nblk,)
        # index_select of whole blocks as rows, not cache[table]: the same copy, several times faster on CPU.
        k = _rows(k_cache).index_select(0, blocks).view(G, S, Hkv, D)
        v = _rows(v_cache).index_select(0, blocks).view(G, S, Hkv, D)
        mask = None
        if sum(lens[i] for i in rows) < G * S:
            visible = torch.arange(S, device=q.device)[None, :] < glens[:, None]  # (G, S)
            # Slots past a sequence's end hold anything (a freed sequence's tokens, NaN in an uninitialised pool):
            # their probability is 0, but a NaN score or 0 * NaN is NaN, so zero those K and V rows.
            pad = (~visible).view(-1).nonzero().squeeze(1)
            k.view(G * S, Hkv * D).index_fill_(0, pad, 0)
            v.view(G * S, Hkv * D).index_fill_(0, pad, 0)
            mask = visible[:, None, None, :]  # (G, 1, 1, S) over heads and the group's query heads
        qg = (q if idx is None else q.index_select(0, idx)).view(G, Hkv, H // Hkv, D)  # (G, Hkv, group, D)
        o = F.scaled_dot_product_attention(qg, k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale)
        if idx is None:
            out.copy_(o.view(N, H, D))
        else:
            out.index_copy_(0, idx, o.reshape(G, H, D))
    return out


def _length_groups(lens: list[int], block_size: int, max_waste: float = 0.25) -> list[tuple[list[int], int]]:
    """Sequences (indices into lens) grouped for one padded gather each: (rows, blocks per row), longest first.

    Sorted by length, a group takes the next sequences while padding them to its longest costs at most max_waste
    of its slots; a lognormal mix of 16-700 tokens makes ~10 groups. Empty sequences join none (their output is 0).
    """
    order = sorted((i for i, n in enumerate(lens) if n > 0), key=lambda i: -lens[i])
    groups: list[tuple[list[int], int]] = []
    for i in order:
        if groups:
            rows, nblk = groups[-1]
            used = sum(lens[r] for r in rows) + lens[i]
            if used >= (1 - max_waste) * (len(rows) + 1) * nblk * block_size:
                rows.append(i)
                continue
        groups.append(([i], -(-lens[i] // block_size)))
    return groups


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
    out = torch.zeros_like(q)
    for i, n in enumerate(lens):
        T = cq[i + 1] - cq[i]
        if T == 0:
            continue
        # A data check the kernels cannot afford (a device sync); the lengths are on the host here anyway.
        if T > n:
            raise ValueError(f"sequence {i}: query_len {T} exceeds seq_len {n} (seq_lens must include the new tokens)")
        k = _gather_paged(k_cache, block_tables[i], n)
        v = _gather_paged(v_cache, block_tables[i], n)
        out[cq[i] : cq[i + 1]] = _attend_one(q[cq[i] : cq[i + 1]], k, v, causal, scale)
    return out


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
    # The caches as (num_blocks * block_size, Hkv * D) token rows: one index_copy_ each, no advanced indexing.
    k_cache.view(-1, k_cache.shape[2] * k_cache.shape[3]).index_copy_(
        0, slots, k.reshape(k.shape[0], -1).to(k_cache.dtype)
    )
    v_cache.view(-1, v_cache.shape[2] * v_cache.shape[3]).index_copy_(
        0, slots, v.reshape(v.shape[0], -1).to(v_cache.dtype)
    )


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
    """Mixture-of-experts SwiGLU FFN as grouped GEMMs: assignments sorted by expert, one contiguous GEMM per expert
    over its block of tokens, one index_add back.

    x (T, d); w_gate, w_up (E, F, d) and w_down (E, d, F) in nn.Linear layout (out, in); topk_weights (T, topk) float,
    topk_ids (T, topk) int -> out (T, d) = sum_k w[t, k] * down_e(silu(gate_e(x_t)) * up_e(x_t)), e = topk_ids[t, k].
    Ids outside [0, E) contribute nothing. The GEMMs run in x's dtype (bf16: oneDNN / AMX accumulate in float32 and
    round each output, as transformers' bf16 experts do; no float32 copy of any weight), the routing weights and
    the sum over a token's experts in float32.
    """
    E = w_gate.shape[0]
    acc = _acc_dtype(x.dtype)
    topk = topk_ids.shape[1]
    ids = topk_ids.reshape(-1).long()  # (T * topk,) assignment a = t * topk + j
    ids = torch.where((ids >= 0) & (ids < E), ids, E)  # invalid ids go to a bucket E that is never run
    # One sort and one host read of the group sizes instead of a nonzero per expert: a decode step calls this once
    # per layer with a few dozen assignments, where the per-op overhead, not the matmuls, is the cost.
    order = torch.argsort(ids, stable=True)  # (T * topk,) assignments grouped by expert
    counts = torch.bincount(ids, minlength=E + 1).tolist()
    n = len(ids) - counts[E]  # assignments that run; the invalid ones sort last
    tok = (order // topk)[:n]  # (n,) source token of each sorted assignment
    xs = x.index_select(0, tok)  # (n, d) each expert's tokens contiguous
    ys = torch.empty(n, w_down.shape[1], dtype=acc, device=x.device)  # (n, d)
    start = 0
    for e in range(E):
        a, b = start, start + counts[e]
        start = b
        if a == b:
            continue
        h = F.silu(F.linear(xs[a:b], w_gate[e])) * F.linear(xs[a:b], w_up[e])  # (n_e, F)
        ys[a:b] = F.linear(h, w_down[e])  # (n_e, d)
    ys *= topk_weights.reshape(-1).index_select(0, order[:n]).to(acc)[:, None]
    out = torch.zeros(x.shape, dtype=acc, device=x.device).index_add_(0, tok, ys)
    return out.to(x.dtype)
