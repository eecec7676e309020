"""The one dispatch point: Triton kernels for CUDA tensors, plain-torch references (kernels/reference.py) elsewhere.

Environment switch `PQRAG_KERNELS` (read at every call, so tests can flip it):
- `auto` (default): Triton when the tensors are on CUDA and triton imports, the reference otherwise;
- `triton`: always the Triton kernels (CPU tensors need TRITON_INTERPRET=1 set before triton is first imported);
- `reference`: always the references, also on CUDA.

Triton is imported lazily, so `import kernels` works where triton is missing (macOS, CPU-only installs). The
implementation modules share names with these functions (kernels/flash_attention.py defines flash_attention), so they
are loaded with importlib.import_module, never `from kernels import flash_attention`, which yields the function.

Public signatures (shapes in brackets; all kernels accept fp16 / bf16 on GPU, fp32 everywhere, fp64 in the references):

    flash_attention(q, k, v, causal=True, softmax_scale=None) -> o
        q [B, T, H, D], k/v [B, S, Hkv, D], H % Hkv == 0, D in {16, 32, 64, 128, 256}. Causal masks are bottom-right
        aligned: query i sees keys j <= i + S - T. Differentiable (dq, dk, dv).
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
import importlib
import os

import torch

from kernels import reference

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


def backend(*tensors: torch.Tensor) -> str:
    """'triton' or 'reference' for a call on these tensors, following PQRAG_KERNELS."""
    mode = os.environ.get(_ENV, "auto").strip().lower() or "auto"
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


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, softmax_scale: float | None = None
) -> torch.Tensor:
    if backend(q) == "reference":
        return reference.flash_attention(q, k, v, causal, softmax_scale)
    fa = importlib.import_module("kernels.flash_attention")

    return fa.flash_attention(q, k, v, causal, softmax_scale)


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
    args = (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale)
    if backend(q) == "reference":
        return reference.flash_attention_varlen(*args)
    fa = importlib.import_module("kernels.flash_attention")

    return fa.flash_attention_varlen(*args)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    if backend(q) == "reference":
        return reference.paged_attention(q, k_cache, v_cache, block_tables, seq_lens, softmax_scale)
    pa = importlib.import_module("kernels.paged_attention")

    return pa.paged_attention(q, k_cache, v_cache, block_tables, seq_lens, softmax_scale)


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
    args = (q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, max_seqlen_q, causal, softmax_scale)
    if backend(q) == "reference":
        return reference.paged_prefill_attention(*args)
    pa = importlib.import_module("kernels.paged_attention")

    return pa.paged_prefill_attention(*args)


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    if backend(k_cache) == "reference":
        return reference.write_kv(k, v, k_cache, v_cache, slot_mapping)
    pa = importlib.import_module("kernels.paged_attention")

    return pa.write_kv(k, v, k_cache, v_cache, slot_mapping)


def pq_adc_topk(lut: torch.Tensor, codes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if backend(lut) == "reference":
        return reference.pq_adc_topk(lut, codes, k)
    pq_adc = importlib.import_module("kernels.pq_adc")

    return pq_adc.pq_adc_topk(lut, codes, k)


def fused_moe(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    if backend(x) == "reference":
        return reference.fused_moe(x, w_gate, w_up, w_down, topk_weights, topk_ids)
    fm = importlib.import_module("kernels.fused_moe")

    return fm.fused_moe(x, w_gate, w_up, w_down, topk_weights, topk_ids)
