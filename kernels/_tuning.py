"""Autotuning shared by the Triton kernels: a cheaper benchmark than triton's default, adjustable by environment.

Each autotuned kernel benchmarks its candidate configs on the first call for every new key (shape bucket, dtype).
Triton's default spends 25 ms of warm-up and 100 ms of repetitions per config; PQRAG_TUNE_MS sets the repetition
budget instead (warm-up is a quarter of it): the GPU tests use a few ms, where the choice does not matter.
"""
from __future__ import annotations

import os

import triton


def _bench(kernel_call, quantiles):
    rep = float(os.environ.get("PQRAG_TUNE_MS", "40"))
    return triton.testing.do_bench(kernel_call, warmup=max(1.0, rep / 4), rep=rep, quantiles=quantiles)


def autotune(configs, key, **kwargs):
    """triton.autotune with the benchmark above, on triton versions that accept one."""
    try:
        return triton.autotune(configs=configs, key=key, do_bench=_bench, **kwargs)
    except TypeError:  # older triton without the do_bench argument
        return triton.autotune(configs=configs, key=key, **kwargs)
