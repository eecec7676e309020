"""Autotuning shared by the Triton kernels: a cheaper benchmark than triton's default, adjustable by environment.

Each autotuned kernel benchmarks its candidate configs on the first call for every new key (shape bucket, dtype).
Triton's default spends 25 ms of warm-up and 100 ms of repetitions per config; PQRAG_TUNE_MS sets the repetition
budget instead (warm-up is a quarter of it): the GPU tests use a few ms, where the choice does not matter.

PQRAG_TUNE_CONFIGS=N (read when a kernel module is imported) keeps, after a kernel's own pruning, only the N configs
with the smallest tiles (product of the BLOCK_* sizes times the stages): on a fresh GPU box compilation, not timing,
dominates the test suite (every config compiles once per constexpr combination). bench/gpu_check.sh runs the tests
with N=1: no benchmarking, one compile per combination, and the smallest tile is the one most sure to fit in shared
memory (the autotuner skips configs that do not fit only when it benchmarks several).
"""

from __future__ import annotations

import os

import triton


def tile_configs(specs: list[tuple], names: tuple[str, str]) -> list[triton.Config]:
    """(a, b, warps, stages) tuples -> triton.Configs setting the two tile sizes `names` to a and b."""
    return [triton.Config({names[0]: a, names[1]: b}, num_warps=w, num_stages=s) for a, b, w, s in specs]


def bucket(n: int) -> int:
    # Autotune key: a power of two, so varying lengths or token counts do not re-tune on every call.
    return max(16, triton.next_power_of_2(int(n)))


def _bench(kernel_call, quantiles):
    rep = float(os.environ.get("PQRAG_TUNE_MS", "40"))
    return triton.testing.do_bench(kernel_call, warmup=max(1.0, rep / 4), rep=rep, quantiles=quantiles)


def autotune(configs, key, **kwargs):
    """triton.autotune with the benchmark above, on triton versions that accept one."""
    limit = int(os.environ.get("PQRAG_TUNE_CONFIGS", "0") or 0)
    if limit > 0:
        prune = dict(kwargs.pop("prune_configs_by", None) or {})
        kwargs["prune_configs_by"] = {**prune, "early_config_prune": _smallest(prune.get("early_config_prune"), limit)}
    try:
        return triton.autotune(configs=configs, key=key, do_bench=_bench, **kwargs)
    except TypeError:  # older triton without the do_bench argument
        return triton.autotune(configs=configs, key=key, **kwargs)


def _footprint(cfg) -> int:
    size = cfg.num_stages
    for name, value in cfg.kwargs.items():
        if name.startswith("BLOCK"):
            size *= value
    return size


def _smallest(prune, limit: int):
    """An early_config_prune that applies `prune` (if any), then keeps the `limit` smallest configs."""

    def pick(configs, named_args, **kwargs):
        kept = prune(configs, named_args, **kwargs) if prune is not None else configs
        return sorted(kept, key=_footprint)[:limit]  # stable: ties keep the kernel's order

    return pick
