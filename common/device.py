"""The default torch device, and the default dtype on it: the one place that decides both.

CPU dtype: bfloat16 where the CPU has bf16 matrix or vector units (Intel AMX `amx_bf16`, AVX-512 `avx512_bf16`;
oneDNN then runs bf16 GEMMs at several times the float32 FLOP rate), float32 elsewhere (an AVX2-only CPU emulates
bf16 arithmetic, slower than float32). On CUDA: bfloat16, as vLLM serves a float32 checkpoint. The CPU's flags are
read once from /proc/cpuinfo; tests pass their own.
"""

from __future__ import annotations

import functools
import logging

import torch

from common.errors import InvalidArgumentError

log = logging.getLogger("pqrag.device")

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of a CPU with native bf16 arithmetic
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # the names --dtype takes


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo's `flags`, x86 Linux); empty where there is no such file."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_flags(flags: frozenset[str] | None = None) -> list[str]:
    """The flags among BF16_CPU_FLAGS that the CPU has (flags: cpu_flags() unless given); empty: no native bf16."""
    have = cpu_flags() if flags is None else flags
    return [f for f in BF16_CPU_FLAGS if f in have]


def default_dtype(
    device: torch.device | str, stored: torch.dtype | None = None, flags: frozenset[str] | None = None
) -> torch.dtype:
    """The dtype a model (generator, embedder) runs in on device when none is asked for. stored: the checkpoint's
    dtype, if it has one: a float32 (or float16 on a CPU) checkpoint runs in the device's fast dtype; bfloat16 (and
    float16 on CUDA) stays as stored: no upcast that doubles the memory (pass --dtype float32 for that)."""
    cuda = torch.device(device).type == "cuda"
    fast = torch.bfloat16 if cuda or cpu_bf16_flags(flags) else torch.float32
    if stored == torch.bfloat16 or (cuda and stored == torch.float16):
        return stored
    return fast


def describe_dtype_choice(
    device: torch.device | str, stored: torch.dtype | None = None, flags: frozenset[str] | None = None
) -> str:
    """default_dtype's choice and why, for the log line at start."""
    device = torch.device(device)
    dtype = default_dtype(device, stored, flags)
    name = str(dtype).removeprefix("torch.")
    if dtype == stored and stored != torch.float32:
        return f"{name} (the checkpoint's own)"
    if device.type == "cuda":
        return f"{name} (CUDA)"
    have = cpu_bf16_flags(flags)
    if have:
        return f"{name} (the CPU has {', '.join(have)})"
    return f"{name} (the CPU has none of {', '.join(BF16_CPU_FLAGS)})"


def parse_dtype(
    dtype: torch.dtype | str | None, device: torch.device | str, stored: torch.dtype | None = None
) -> torch.dtype:
    """A dtype option (a torch.dtype, one of DTYPES' names, or None / "auto": default_dtype) -> torch.dtype;
    another name raises InvalidArgumentError naming the choices."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return default_dtype(device, stored)
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]
