"""Attention, paged-KV, PQ-scan and MoE kernels: Triton on CUDA, plain torch elsewhere (see kernels/ops.py).

This package imports nothing else of pqrag, and triton only lazily, so it works on machines without triton.

- ops.py: the public ops and the one dispatch point (PQRAG_KERNELS) between Triton and the references;
- checks.py: the ops' argument checks, run once before the dispatch;
- reference.py: the plain-torch references (the CPU path and the tests' ground truth);
- triton/: the Triton kernels and their host wrappers.
"""

from kernels.ops import (
    backend,
    flash_attention,
    flash_attention_varlen,
    fused_moe,
    paged_attention,
    paged_prefill_attention,
    pq_adc_topk,
    triton_available,
    write_kv,
)

__all__ = [
    "backend",
    "flash_attention",
    "flash_attention_varlen",
    "fused_moe",
    "paged_attention",
    "paged_prefill_attention",
    "pq_adc_topk",
    "triton_available",
    "write_kv",
]
