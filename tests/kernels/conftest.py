"""Kernel tests: Triton on CUDA when there is a GPU, the Triton interpreter on CPU otherwise.

TRITON_INTERPRET must be set before any @triton.jit function is defined; kernels/ imports its Triton modules
(kernels/triton/) lazily, so setting it here, at collection time, is early enough even when the rest of the suite
imported triton already.
Other test packages are unaffected: on CPU they go through the reference path of the dispatch.
"""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> str:
    return "cuda" if CUDA else "cpu"


@pytest.fixture
def poison(monkeypatch):
    """Kernel outputs start as NaN, so an element a kernel forgets to write fails the comparison."""
    from kernels.triton import _alloc

    monkeypatch.setattr(_alloc, "POISON", float("nan"))


@pytest.fixture
def force_triton(monkeypatch):
    """PQRAG_KERNELS=triton: the public ops run the Triton kernels (interpreted on CPU) or raise."""
    pytest.importorskip("triton")
    monkeypatch.setenv("PQRAG_KERNELS", "triton")
