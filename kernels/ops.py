"""The one dispatch point: Triton kernels (kernels/triton/) for CUDA tensors, plain-torch references
(kernels/reference.py) elsewhere.

Every op checks its arguments once (kernels/checks.py), then picks a backend, following the environment switch
`PQRAG_KERNELS` (read at every call, so tests can flip it):
- `auto` (default): Triton when the tensors are on CUDA, triton imports and the kernel covers the call; the reference
  otherwise (on the same device). The kernels cover fp16 / bf16 / fp32 and head dims 16-256 (powers of two); float64,
  other head dims, pq_adc_topk past k = 1024 and the rest each Triton module's `unsupported()` names run the reference;
- `triton`: always the Triton kernels (CPU tensors need TRITON_INTERPRET=1 set before triton is first imported); a call
  the kernel does not cover is a ValueError;
- `reference`: always the references, also on CUDA.
Nothing else chooses: the Triton wrappers never fall back to the reference themselves.

Triton is imported lazily (kernels/triton/ is imported only once Triton is chosen), so `import kernels` works where
triton is missing (macOS, CPU-only installs).

Public signatures (shapes in brackets; the references also take fp64):

    flash_attention(q, k, v, causal=True, softmax_scale=None) -> o
        q [B, T, H, D], k/v [B, S, Hkv, D], H % Hkv == 0 (the Triton kernels take D in {16, 32, 64, 128, 256}). Causal
        masks are bottom-right aligned: query i sees keys j <= i + S - T; rows that see no key output zeros.
        softmax_scale defaults to 1 / sqrt(D) (all attention ops). Differentiable (dq, dk, dv).
    flash_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                           causal=True, softmax_scale=None) -> o
        q [total_q, H, D], k/v [total_k, Hkv, D], cu_seqlens [batch + 1] int32. Differentiable.
        Pass max_seqlen_* to avoid a device sync.
    paged_attention(q, k_cache, v_cache, block_tables, seq_lens, softmax_scale=None) -> o
        Decode. q [N, H, D] (one token per sequence, the last one), caches [num_blocks, block_size, Hkv, D],
        block_tables [N, max_blocks] int32, seq_lens [N] int32 (keys per sequence, the new token's included).
    paged_prefill_attention(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, max_seqlen_q=None,
                            causal=True, softmax_scale=None) -> o
        Chunked prefill over a paged prefix. q [total_q, H, D] packs query_len[i] = cu_seqlens_q[i+1] - cu_seqlens_q[i]
        new tokens per sequence (cu_seqlens_q [N + 1] int32). Write their keys/values with write_kv FIRST: seq_lens[i]
        counts the cached prefix plus the new tokens. Query token t of sequence i (0-based in its chunk) sees keys
        j <= seq_lens[i] - query_len[i] + t. Decode is query_len == 1. Pass max_seqlen_q to avoid a device sync.
    write_kv(k, v, k_cache, v_cache, slot_mapping) -> None
        k/v [N, Hkv, D] into the caches in place; slot_mapping [N] int64, slot = block * block_size + offset;
        negative slots (padding) are skipped.
    pq_adc_topk(lut, codes, k) -> (values, indices)
        lut [nq, m, ksub] float32, codes [n, m] uint8 -> the k smallest dist[q, i] = sum_j lut[q, j, codes[i, j]]:
        values [nq, k] float32 ascending, indices [nq, k] int64; +inf / -1 padding when n < k.
    fused_moe(x, w_gate, w_up, w_down, topk_weights, topk_ids) -> out
        x [T, d], w_gate/w_up [E, F, d], w_down [E, d, F] (nn.Linear layout), topk_weights [T, topk] float,
        topk_ids [T, topk] int -> [T, d] = sum_k w[t, k] * w_down[e] @ (silu(w_gate[e] @ x_t) * (w_up[e] @ x_t)),
        e = topk_ids[t, k]; ids outside [0, E) contribute nothing. Inference only (no autograd).
"""

from __future__ import annotations

import functools
import os

import torch

from kernels import checks, reference

__all__ = [
    "backend",
    "triton_available",
    "flash_attention",
    "flash_attention_varlen",
    "paged_attention",
    "paged_prefill_attention",
    "write_kv",
    "pq_adc_topk",
    "fused_moe",
]

_ENV = "PQRAG_KERNELS"


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install that fails at import
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _mode() -> str:
    return os.environ.get(_ENV, "auto").strip().lower() or "auto"


def backend(*tensors: torch.Tensor) -> str:
    """'triton' or 'reference' for a call on these tensors, following PQRAG_KERNELS."""
    mode = _mode()
    if mode == "reference":
        return "reference"
    if mode == "triton":
        if not triton_available():
            raise RuntimeError(f"{_ENV}=triton but triton cannot be imported; install triton or set {_ENV}=auto")
        if not tensors[0].is_cuda and not _interpreting():
            raise RuntimeError(f"{_ENV}=triton on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported")
        return "triton"
    if mode != "auto":
        raise ValueError(f"{_ENV} must be one of auto, triton, reference; got {mode!r}")
    return "triton" if tensors[0].is_cuda and triton_available() else "reference"


def _covered(why_not: str | None) -> bool:
    """Whether the Triton kernel takes a call that backend() gave to Triton; `why_not` is its module's unsupported().

    A call it does not cover runs the reference under PQRAG_KERNELS=auto and is an error under PQRAG_KERNELS=triton,
    which promises the kernels.
    """
    if why_not is None:
        return True
    if _mode() == "triton":
        raise ValueError(f"{_ENV}=triton, but {why_not} (set {_ENV}=auto to run the reference instead)")
    return False


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, softmax_scale: float | None = None
) -> torch.Tensor:
    checks.flash_attention(q, k, v)
    if backend(q) == "triton":
        from kernels.triton import flash_attention as fa

        if _covered(fa.unsupported(q)):
            return fa.flash_attention(q, k, v, causal, softmax_scale)
    return reference.flash_attention(q, k, v, causal, softmax_scale)


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
    checks.flash_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k)
    args = (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale)
    if backend(q) == "triton":
        from kernels.triton import flash_attention as fa

        if _covered(fa.unsupported(q)):
            return fa.flash_attention_varlen(*args)
    return reference.flash_attention_varlen(*args)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    checks.paged_attention(q, k_cache, v_cache, block_tables, seq_lens)
    checks.paged_decode(q, seq_lens)
    args = (q, k_cache, v_cache, block_tables, seq_lens, softmax_scale)
    if backend(q) == "triton":
        from kernels.triton import paged_attention as pa

        if _covered(pa.unsupported(q, k_cache, v_cache)):
            return pa.paged_attention(*args)
    return reference.paged_attention(*args)


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
    checks.paged_attention(q, k_cache, v_cache, block_tables, seq_lens)
    checks.paged_prefill(seq_lens, cu_seqlens_q)
    args = (q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, max_seqlen_q, causal, softmax_scale)
    if backend(q) == "triton":
        from kernels.triton import paged_attention as pa

        if _covered(pa.unsupported(q, k_cache, v_cache)):
            return pa.paged_prefill_attention(*args)
    return reference.paged_prefill_attention(*args)


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    checks.write_kv(k, v, k_cache, v_cache, slot_mapping)
    if backend(k_cache) == "triton":
        from kernels.triton import write_kv as wkv

        if _covered(wkv.unsupported(k, k_cache, v_cache)):
            return wkv.write_kv(k, v, k_cache, v_cache, slot_mapping)
    return reference.write_kv(k, v, k_cache, v_cache, slot_mapping)


def pq_adc_topk(lut: torch.Tensor, codes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    checks.pq_adc_topk(lut, codes, k)
    if backend(lut) == "triton":
        from kernels.triton import pq_adc

        if _covered(pq_adc.unsupported(codes, k)):
            return pq_adc.pq_adc_topk(lut, codes, k)
    return reference.pq_adc_topk(lut, codes, k)


def fused_moe(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    args = (x, w_gate, w_up, w_down, topk_weights, topk_ids)
    checks.fused_moe(*args)
    if backend(x) == "triton":
        from kernels.triton import fused_moe as fm

        if _covered(fm.unsupported(x)):
            return fm.fused_moe(*args)
    return reference.fused_moe(*args)
