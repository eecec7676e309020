"""What the host wrappers share: the interpreter switch, the inputs the kernels cover, tl.dot precision, strides.

The dispatch (kernels/ops.py) asks each op module's `unsupported(...)` before it picks Triton; the helpers here say
what the attention kernels take, so that a dtype or head dim they do not cover runs the reference instead.
"""

from __future__ import annotations

import os

import torch

# TRITON_INTERPRET is read once, as triton itself does when the kernels are defined: it picks small tiles.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
# The kernels compute in these dtypes; float64 stays with the references.
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# tl.arange needs a power of two and tl.dot at least 16.
HEAD_DIMS = (16, 32, 64, 128, 256)


def unsupported_dtype(dtype: torch.dtype, what: str) -> str | None:
    if dtype not in DTYPES:
        return f"the Triton kernels take {what} in float16, bfloat16 or float32; got {dtype}"
    return None


def unsupported_head_dim(head_dim: int) -> str | None:
    if head_dim not in HEAD_DIMS:
        return f"the Triton kernels take a head dim in {HEAD_DIMS}; got {head_dim}"
    return None


def unsupported_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> str | None:
    # Caches are written in place and far too large to copy per call.
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        return "the Triton kernels need k_cache and v_cache contiguous in the head dim"
    return None


def precision(dtype: torch.dtype) -> str:
    # fp32 inputs get exact products (the tests compare at 1e-4); fp16 / bf16 ignore the setting.
    return "ieee" if dtype == torch.float32 else "tf32"


def last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    # The kernels take any row strides but need unit stride along the last dim.
    return x if x.stride(-1) == 1 else x.contiguous()
