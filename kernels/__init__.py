"""Attention, paged-KV and PQ-scan kernels: Triton on CUDA, plain torch elsewhere (see kernels/ops.py).

This package imports nothing else of pqrag, and triton only lazily, so it works on machines without triton.

`kernels.flash_attention` and `kernels.paged_attention` are the dispatching functions, although modules of the same
names hold the Triton implementations; reach those with importlib.import_module("kernels.flash_attention").
"""

import sys
import types

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


class _Package(types.ModuleType):
    # Importing the submodule kernels.flash_attention makes the import system run
    # setattr(kernels, "flash_attention", <module>), which would shadow the function for every caller.
    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and name in __all__:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
