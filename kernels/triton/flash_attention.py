"""FlashAttention-2 in Triton, the entry points: dense and variable-length (packed) sequences, grouped-query heads.

The kernels are in flash_forward.py and flash_backward.py; this module ties them into an autograd Function.
Everything is varlen internally: the dense (B, T, H, D) entry point packs to (B*T, H, D) with uniform cu_seqlens,
a free reshape.

Causal masks are bottom-right aligned: with T queries over S keys, query i sees keys j <= i + S - T. Rows that see
no key output zeros.
"""

from __future__ import annotations

import torch

from kernels import checks
from kernels.triton._launch import last_dim_contiguous, unsupported_dtype, unsupported_head_dim
from kernels.triton.flash_backward import backward
from kernels.triton.flash_forward import forward


def unsupported(q: torch.Tensor) -> str | None:
    """Why the kernels cannot take attention over these queries (checked arguments), or None."""
    return unsupported_dtype(q.dtype, "q, k, v") or unsupported_head_dim(q.shape[-1])


class _FlashAttnVarlen(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, causal, scale):
        o, lse = forward(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale)
        ctx.save_for_backward(q, k, v, o, lse, cu_q, cu_k)
        ctx.args = (max_q, max_k, causal, scale)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, cu_q, cu_k = ctx.saved_tensors
        dq, dk, dv = backward(last_dim_contiguous(do), q, k, v, o, lse, cu_q, cu_k, *ctx.args)
        return dq, dk, dv, None, None, None, None, None, None


def _uniform_cu(batch: int, n: int, device: torch.device) -> torch.Tensor:
    """(batch + 1,) int32 offsets of `batch` sequences of n tokens each."""
    return torch.arange(batch + 1, device=device, dtype=torch.int32) * n


def _max_len(cu: torch.Tensor) -> int:
    return int((cu[1:] - cu[:-1]).max().item()) if cu.numel() > 1 else 0


def flash_attention_varlen(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, causal=True, softmax_scale=None
) -> torch.Tensor:
    """Packed sequences: q (total_q, H, D), k/v (total_k, Hkv, D), cu_seqlens (batch + 1,) int32 -> (total_q, H, D).

    The arguments are those of kernels.flash_attention_varlen, already checked.
    """
    cu_q = cu_seqlens_q.to(device=q.device, dtype=torch.int32).contiguous()
    cu_k = cu_seqlens_k.to(device=q.device, dtype=torch.int32).contiguous()
    max_q = _max_len(cu_q) if max_seqlen_q is None else int(max_seqlen_q)
    max_k = _max_len(cu_k) if max_seqlen_k is None else int(max_seqlen_k)
    scale = checks.softmax_scale(softmax_scale, q.shape[-1])
    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    return _FlashAttnVarlen.apply(q, k, v, cu_q, cu_k, max_q, max_k, bool(causal), scale)


def flash_attention(q, k, v, causal=True, softmax_scale=None) -> torch.Tensor:
    """q (B, T, H, D), k/v (B, S, Hkv, D) -> o (B, T, H, D); the arguments of kernels.flash_attention, checked."""
    B, T, H, D = q.shape
    S = k.shape[1]
    cu_q = _uniform_cu(B, T, q.device)
    cu_k = _uniform_cu(B, S, q.device)
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
