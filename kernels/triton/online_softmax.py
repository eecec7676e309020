"""The online softmax shared by FlashAttention (kernels/triton/flash_forward.py) and PagedAttention (paged_attention.py).

A program owns BLOCK_M query rows and streams tiles of keys and values past them; the softmax over all keys is
carried in three running values per row, so the scores never reach memory:
- m_i (BLOCK_M,): the largest score seen so far;
- l_i (BLOCK_M,): the sum of exp(score - m_i) over the keys seen so far (the normaliser);
- acc (BLOCK_M, HEAD_DIM) fp32: the sum of exp(score - m_i) * v, unnormalised.
A tile with a larger maximum rescales l_i and acc by exp(m_old - m_new). Everything is in the log2 domain: scores are
multiplied by softmax_scale * log2(e), so that exp(x) becomes the cheaper exp2, and m_i and the logsumexp are in
log2 units.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def log2_scale(sm_scale):
    """softmax_scale -> the factor that takes q.k products to the log2 domain."""
    return sm_scale * 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2(e))


@triton.jit
def online_softmax_init(BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """-> (acc, l_i, m_i) before the first key tile."""
    # A finite floor instead of -inf keeps rows with no visible key free of inf - inf (NaN).
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - 1.0e38
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    return acc, l_i, m_i


@triton.jit
def online_softmax_update(acc, l_i, m_i, qk, keep, v, qk_scale, MASK: tl.constexpr, PRECISION: tl.constexpr):
    """Fold one tile of keys into the running softmax -> (acc, l_i, m_i).

    qk (BLOCK_M, BLOCK_N) fp32 raw q.k products of the tile; keep (BLOCK_M, BLOCK_N) the visible keys, read only when
    MASK (unmasked tiles, where every key is visible, skip the select); v (BLOCK_N, HEAD_DIM) the tile's values in the
    dtype of the p @ v product; qk_scale from log2_scale.
    """
    if MASK:
        qk = tl.where(keep, qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
    else:
        # The scale folds into the row max and one fused multiply-add per score.
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)  # rescales what was accumulated under the old max
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def online_softmax_finish(acc, l_i, m_i, empty_lse):
    """-> (out (BLOCK_M, HEAD_DIM) fp32 normalised, lse (BLOCK_M,) logsumexp in log2 units).

    A row that saw no key (l_i == 0) outputs zeros and logsumexp empty_lse.
    """
    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), empty_lse)
    return out, lse
