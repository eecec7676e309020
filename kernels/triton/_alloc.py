"""Output allocation for the Triton wrappers, with a poison switch for tests.

Kernels must write every element of their outputs; tests set POISON to NaN so an element a kernel skips shows up as
a NaN instead of whatever the allocator happened to hand back.
"""

from __future__ import annotations

import torch

POISON: float | None = None


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype, device=device)
    if POISON is not None:
        t.fill_(POISON if dtype.is_floating_point else -(2**31))
    return t


def empty_like(x: torch.Tensor) -> torch.Tensor:
    return empty(tuple(x.shape), x.dtype, x.device)
