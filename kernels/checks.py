"""The argument checks of the public ops, and their one default: run once by kernels/ops.py before it dispatches.

Each check covers what every backend needs (ranks, shapes that agree, query heads grouped over key/value heads,
dtypes and devices that match) and raises ValueError naming the argument; none reads tensor data, so none costs a
device sync. Past them the references and the Triton wrappers assume well-formed arguments. What only the Triton
kernels need (a dtype, head dim or size they cover) is each kernel module's `unsupported(...)`, which the dispatch
asks when it picks Triton.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def softmax_scale(scale: float | None, head_dim: int) -> float:
    """The softmax scale of the attention ops: 1 / sqrt(head_dim) unless given."""
    return float(scale) if scale is not None else 1.0 / math.sqrt(head_dim)


def _shapes(*tensors: Tensor) -> str:
    return ", ".join(str(tuple(t.shape)) for t in tensors)


def _heads(h: int, hkv: int, what: str = "key/value heads") -> None:
    if hkv == 0 or h % hkv != 0:
        raise ValueError(f"query heads ({h}) must be a multiple of {what} ({hkv})")


def _qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    # The layout checks of both flash ops: heads at dim -2, head dim last.
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"q and k must have the same head dim; got {q.shape[-1]}, {k.shape[-1]}")
    _heads(q.shape[-2], k.shape[-2])
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError("q, k, v must be on the same device")


def flash_attention(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape or q.shape[0] != k.shape[0]:
        raise ValueError(f"expected q (B, T, H, D) and k, v (B, S, Hkv, D); got {_shapes(q, k, v)}")
    _qkv(q, k, v)


def flash_attention_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"expected q (total_q, H, D) and k, v (total_k, Hkv, D); got {_shapes(q, k, v)}")
    _qkv(q, k, v)
    if cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(
            f"cu_seqlens_q and cu_seqlens_k must both be (batch + 1,); got {_shapes(cu_seqlens_q, cu_seqlens_k)}"
        )


def paged_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, seq_lens: Tensor) -> None:
    """The checks of both paged ops; decode adds one query per sequence (paged_decode)."""
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"expected q (tokens, H, D) and caches (num_blocks, block_size, Hkv, D); got {_shapes(q, k_cache)}"
        )
    if k_cache.shape[-1] != q.shape[-1]:
        raise ValueError(f"q's head dim must match the cache's; got {q.shape[-1]}, {k_cache.shape[-1]}")
    _heads(q.shape[1], k_cache.shape[2], "cache heads")
    if block_tables.dim() != 2 or seq_lens.dim() != 1 or block_tables.shape[0] != seq_lens.shape[0]:
        raise ValueError(
            f"expected block_tables (N, max_blocks) and seq_lens (N,); got {_shapes(block_tables, seq_lens)}"
        )


def paged_decode(q: Tensor, seq_lens: Tensor) -> None:
    if q.shape[0] != seq_lens.shape[0]:
        raise ValueError(f"decode takes one query per sequence: q has {q.shape[0]} rows, seq_lens {seq_lens.shape[0]}")


def paged_prefill(seq_lens: Tensor, cu_seqlens_q: Tensor) -> None:
    if cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape[0] != seq_lens.shape[0] + 1:
        raise ValueError(f"cu_seqlens_q must be (N + 1,) = ({seq_lens.shape[0] + 1},); got {tuple(cu_seqlens_q.shape)}")


def write_kv(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> None:
    if k.dim() != 3 or v.shape != k.shape or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"expected k, v (N, Hkv, D) and caches (num_blocks, block_size, Hkv, D); got {_shapes(k, k_cache)}"
        )
    if k.shape[1:] != k_cache.shape[2:]:
        raise ValueError(
            f"k/v heads and head dim {tuple(k.shape[1:])} do not match the cache {tuple(k_cache.shape[2:])}"
        )
    if slot_mapping.shape != (k.shape[0],):
        raise ValueError(f"slot_mapping must be ({k.shape[0]},); got {tuple(slot_mapping.shape)}")


def pq_adc_topk(lut: Tensor, codes: Tensor, k: int) -> None:
    if lut.dim() != 3 or codes.dim() != 2 or codes.shape[1] != lut.shape[1]:
        raise ValueError(f"expected lut (nq, m, ksub) and codes (n, m); got {_shapes(lut, codes)}")
    if codes.dtype != torch.uint8:
        raise ValueError(f"codes must be uint8; got {codes.dtype}")
    if lut.shape[2] > 256:
        raise ValueError(f"uint8 codes index at most 256 centroids per sub-quantizer; lut has ksub={lut.shape[2]}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")


def fused_moe(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, topk_weights: Tensor, topk_ids: Tensor) -> None:
    if x.dim() != 2 or w_gate.dim() != 3 or w_up.shape != w_gate.shape or w_down.dim() != 3:
        raise ValueError(
            f"expected x (T, d), w_gate/w_up (E, F, d), w_down (E, d, F); got {_shapes(x, w_gate, w_down)}"
        )
    E, Fdim, d = w_gate.shape
    if w_down.shape != (E, d, Fdim) or x.shape[1] != d:
        raise ValueError(
            f"w_down must be (E, d, F) = {(E, d, Fdim)} and x (T, {d}); got {tuple(w_down.shape)}, {tuple(x.shape)}"
        )
    if topk_ids.dim() != 2 or topk_weights.shape != topk_ids.shape or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(
            f"topk_ids and topk_weights must both be (T, topk) with T = {x.shape[0]}; got "
            f"{_shapes(topk_ids, topk_weights)}"
        )
    if not (x.dtype == w_gate.dtype == w_up.dtype == w_down.dtype):
        raise ValueError(
            f"x and the expert weights must share a dtype; got {x.dtype}, {w_gate.dtype}, {w_up.dtype}, {w_down.dtype}"
        )
    if topk_ids.dtype.is_floating_point or not topk_weights.dtype.is_floating_point:
        raise ValueError(
            f"topk_ids and topk_weights must be integers and floats; got {topk_ids.dtype}, {topk_weights.dtype}"
        )
