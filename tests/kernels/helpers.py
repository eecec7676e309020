"""Shared helpers for the kernel tests: tolerances, comparisons, random paged caches."""

from __future__ import annotations

import torch

# Relative error ||out - ref|| / ||ref|| against a float64 reference computed from the same (rounded) inputs.
TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}
BWD_TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def dtypes(device: str) -> list[torch.dtype]:
    return [torch.float32] if device == "cpu" else [torch.float32, torch.float16, torch.bfloat16]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    assert torch.isfinite(out).all(), "non-finite output (an unwritten, poisoned element?)"
    den = ref.norm().item()
    return (out - ref).norm().item() / (den if den > 0 else 1.0)


def gen(seed: int | None = None) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()) if seed is None else seed)
    return g


def randn(*shape: int, g: torch.Generator, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)


def paged_cache(
    lens: list[int],
    block_size: int,
    hkv: int,
    d: int,
    *,
    g: torch.Generator,
    dtype: torch.dtype,
    device: str,
    spare_blocks: int = 3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random caches whose blocks are handed to the sequences in a shuffled order -> k_cache, v_cache, tables, lens.

    Tables carry one unused trailing entry per sequence and the pool has spare blocks, as in a real allocator.
    """
    max_blocks = max((n + block_size - 1) // block_size for n in lens) + 1
    num_blocks = len(lens) * max_blocks + spare_blocks
    k_cache = randn(num_blocks, block_size, hkv, d, g=g, dtype=dtype, device=device)
    v_cache = randn(num_blocks, block_size, hkv, d, g=g, dtype=dtype, device=device)
    perm = torch.randperm(num_blocks, generator=g)[: len(lens) * max_blocks]
    tables = perm.view(len(lens), max_blocks).to(device=device, dtype=torch.int32)
    return k_cache, v_cache, tables, torch.tensor(lens, dtype=torch.int32, device=device)


def cu_seqlens(lens: list[int], device: str) -> torch.Tensor:
    out = torch.zeros(len(lens) + 1, dtype=torch.int32)
    out[1:] = torch.tensor(lens, dtype=torch.int32).cumsum(0)
    return out.to(device)
