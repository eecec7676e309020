"""The trained part of a vector index, behind one small interface, and the one place that picks its implementation.

A `Backend` holds PQ codes (or IVF lists of residual codes) under int64 ids and scans them; the raw vectors, the
id -> row map, exact search and re-ranking belong to vector_index.VectorIndex, which owns one backend once trained.
Two implementations:

* "torch" (torch_backend.py): this project's PQ / IVF-PQ. Codes, ids and codebooks are torch tensors on the
  index's device; the ADC scan goes through ``kernels.pq_adc_topk`` (Triton on CUDA, the torch reference elsewhere).
* "faiss" (faiss_backend.py): ``IndexPQ`` in ``IndexIDMap2`` and ``IndexIVFPQ`` with ``add_with_ids``; cloned to
  the GPU for unfiltered searches when faiss-gpu sees a device.

``backend=None`` picks the measured default per device (``default_backend``): **faiss on the CPU** and
**torch on CUDA**. Measured on the 2-core Xeon reference machine (bench/retrieval.py, bench/RESULTS.md;
100k x 384 MiniLM mixtures, m=48, nlist=1024, nprobe=32, re-ranking k'=80): both backends reach the same
recall (0.974 vs 0.972 recall@10; without re-ranking own IVF-PQ 0.863 vs faiss 0.864 and own PQ 0.854 vs
0.848, since the codebooks follow faiss's k-means recipe), but faiss's SIMD scan answers ~1,500 vs ~330-600
queries/s on one thread and ~3,700-6,100 vs ~700-1,000 batched (ranges over runs on a shared machine), so
faiss is the CPU default. The torch CPU scan is bound by per-candidate gathers and per-call operator
overhead, not by arithmetic. On CUDA the torch backend keeps codes and LUTs on the GPU and scans with the
Triton kernel, whereas the faiss-cpu wheel this project installs cannot use a GPU; faiss-gpu vs Triton has
not been measured (no GPU on the reference machine), so that choice rests on the dependency, not on a timing.

Backends speak the internal convention (vectors.py): `search` returns numpy (dist, ids), both (nq, k), smaller
is better ("ip" negated), +inf / -1 padding. ``allowed`` restricts results to the given ids inside the search, so
k results come back whenever k allowed vectors exist (an IVF search whose probed lists hold too few allowed vectors
falls back to scanning every allowed vector). Not thread-safe: the owning index serialises calls.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from common.device import default_device
from retrieval.faiss_backend import FaissBackend, faiss
from retrieval.torch_backend import TorchIVFPQ, TorchPQ

BACKENDS = ("torch", "faiss")


class Backend(Protocol):
    name: str  # "torch" | "faiss": a snapshot's trained state reloads only into the same one
    device: torch.device  # where train / add take their tensors
    nlist: int  # IVF lists; 0 for exhaustive PQ

    @property
    def is_trained(self) -> bool: ...

    def train(self, x: torch.Tensor, coarse: torch.Tensor | None = None) -> None:
        """Train codebooks (and coarse centroids) on x (n, d) float32 on self.device. coarse: IVF centroids
        (nlist, d) trained already (the tuner shares them between settings), so only the codebooks are trained."""

    def add(self, x: torch.Tensor, ids: np.ndarray) -> None:
        """Encode x (n, d) float32 on self.device under new int64 ids (n,) (the caller checks they are new)."""

    def remove(self, ids: np.ndarray) -> None:
        """Drop the codes of these ids (int64, unique, all present)."""

    def search(self, q: torch.Tensor, k: int, nprobe: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """q (nq, d) -> internal (dist, ids) numpy (nq, k); allowed: sorted unique present ids, or None."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """The trained state and codes as numpy arrays (for the index snapshot)."""

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None: ...


def default_backend(device: str | torch.device | None = None) -> str:
    """The measured default: "torch" on CUDA (Triton ADC), "faiss" on the CPU (see module docstring)."""
    dev = torch.device(device) if device is not None else default_device()
    if dev.type == "cuda" or faiss is None:
        return "torch"
    return "faiss"


def resolve_backend(backend: str | None, device: str | torch.device | None) -> str:
    """The backend a configuration asks for (None: the measured default for `device`); ValueError if unusable."""
    if backend is None:
        return default_backend(device)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None (measured default), got {backend!r}")
    if backend == "faiss" and faiss is None:
        raise ValueError("backend='faiss' needs the faiss package (pip install faiss-cpu)")
    return backend


def make_backend(
    kind: str,
    d: int,
    metric: str,
    m: int,
    nbits: int,
    nlist: int = 0,
    seed: int = 0,
    backend: str | None = None,
    device: str | torch.device | None = None,
) -> Backend:
    """An untrained backend: kind "pq" (exhaustive ADC) or "ivfpq" (nlist lists of residual codes).

    device: the torch backend's device (None: CUDA when available); for faiss, a CUDA device lets unfiltered searches
    run on a GPU clone when faiss-gpu is installed.
    """
    assert kind in ("pq", "ivfpq") and (kind == "pq" or nlist >= 1), (kind, nlist)
    name = resolve_backend(backend, device)
    if device is not None:
        dev = torch.device(device)
    else:
        dev = default_device() if name == "torch" else torch.device("cpu")
    if name == "faiss":
        return FaissBackend(kind, d, metric, m, nbits, nlist, seed, dev)
    if kind == "ivfpq":
        return TorchIVFPQ(d, nlist, m, nbits, metric, dev, seed)
    return TorchPQ(d, m, nbits, metric, dev, seed)
