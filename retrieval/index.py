"""Vector indexes: FlatIndex (exact), PQIndex (exhaustive ADC) and IVFPQIndex (inverted file + residual PQ).

Every index has two interchangeable backends behind one interface (torch_index.py, faiss_index.py):

* ``backend="torch"``: this project's implementation. Codes, ids and codebooks are torch tensors on the
  index's device. On CUDA the ADC scan calls ``kernels.pq_adc_topk`` (Triton); on the CPU it is a
  vectorised torch scan (``F.embedding_bag`` over a per-query lookup table) with blocked partial top-k,
  so the (nq, n) distance matrix is never materialised.
* ``backend="faiss"``: ``IndexFlat`` / ``IndexPQ`` wrapped in ``IndexIDMap2``, and ``IndexIVFPQ`` with
  ``add_with_ids``; cloned to the GPU for unfiltered searches when faiss-gpu sees a device.

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

Results follow faiss: ``search`` returns numpy ``(D, I)``, both (nq, k); D float32, I int64. For "ip"
D are inner products (descending); for "l2" squared distances (ascending). Missing results have id -1
and D = -FLT_MAX ("ip") or +FLT_MAX ("l2"), as faiss pads them. ``allowed`` restricts results to the
given ids inside the search, so k results come back whenever k allowed vectors exist (an IVF search
whose probed lists hold too few allowed vectors falls back to scanning every allowed vector).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from retrieval.faiss_index import FaissIndex, faiss
from retrieval.pq import as_ids, as_matrix, check_metric, check_pq_params, default_device
from retrieval.torch_index import TorchFlat, TorchIVFPQ, TorchPQ
from retrieval.vectors import HalfStore, IdLookup
from retrieval.vectors import rerank as rerank_candidates

BACKENDS = ("torch", "faiss")
FLT_MAX = float(np.finfo(np.float32).max)


def default_backend(device: str | torch.device | None = None) -> str:
    """The measured default: "torch" on CUDA (Triton ADC), "faiss" on the CPU (see module docstring)."""
    dev = torch.device(device) if device is not None else default_device()
    if dev.type == "cuda" or faiss is None:
        return "torch"
    return "faiss"


def resolve_backend(backend: str | None, device: str | torch.device | None) -> str:
    if backend is None:
        return default_backend(device)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None (measured default), got {backend!r}")
    if backend == "faiss" and faiss is None:
        raise ValueError("backend='faiss' needs the faiss package (pip install faiss-cpu)")
    return backend


# ---------------------------------------------------------------------------------------------------------------
# public indexes


class _Index:
    """Shared front end: validation, id bookkeeping, optional float16 re-ranking store, result format.

    Not thread-safe: callers serialise access (CollectionIndex holds a lock around every call).
    """

    kind = ""

    def __init__(
        self,
        d: int,
        metric: str = "ip",
        backend: str | None = None,
        device: str | torch.device | None = None,
        keep_vectors: bool = False,
        vectors_path: str | os.PathLike | None = None,
        rerank_factor: int = 4,
        nprobe: int = 1,
    ):
        if not isinstance(d, (int, np.integer)) or d <= 0:
            raise ValueError(f"dimension d must be a positive integer, got {d!r}")
        check_metric(metric)
        if not isinstance(rerank_factor, (int, np.integer)) or rerank_factor < 1:
            raise ValueError(f"rerank_factor must be an integer >= 1, got {rerank_factor!r}")
        self.d, self.metric = int(d), metric
        self.backend = resolve_backend(backend, device)
        self.device = (
            torch.device(device)
            if device is not None
            else (default_device() if self.backend == "torch" else torch.device("cpu"))
        )
        self.rerank_factor = int(rerank_factor)
        self.nprobe = _check_positive(nprobe, "nprobe")
        self.store = HalfStore(d, vectors_path) if keep_vectors or vectors_path is not None else None
        self._ids = IdLookup()
        self._next_id = 0
        self._impl = self._make_impl()

    def _make_impl(self):  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def is_trained(self) -> bool:
        return self._impl.is_trained

    @property
    def ntotal(self) -> int:
        return len(self._ids)

    def train(self, x) -> None:
        """Train codebooks / coarse centroids on x (n, d)."""
        self._impl.train(as_matrix(x, self.d, "training data", device=self.device))

    def add(self, x, ids=None) -> np.ndarray:
        """Add vectors x (n, d) under int64 ids (default: consecutive new ids). Returns the ids."""
        if not self.is_trained:
            raise ValueError(f"the {type(self).__name__} must be trained before add(); call train(x) first")
        xt = as_matrix(x, self.d, "vectors", device=self.device)
        n = xt.shape[0]
        if ids is None:
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        ids = as_ids(ids, n)
        if len(np.unique(ids)) != n:
            raise ValueError("ids passed to add() contain duplicates")
        dup = self._ids.lookup(ids) >= 0
        if dup.any():
            raise ValueError(f"ids already in the index: {ids[dup][:10].tolist()} (remove them first)")
        if n == 0:
            return ids
        self._impl.add(xt, ids)
        self._ids.insert(ids, np.zeros(n, np.int64))
        if self.store is not None:
            self.store.add(ids, xt)
        self._next_id = max(self._next_id, int(ids.max()) + 1)
        return ids

    def remove(self, ids) -> int:
        """Remove vectors by id; unknown ids are ignored. Returns how many were removed."""
        ids = np.unique(as_ids(ids))
        present = ids[self._ids.lookup(ids) >= 0]
        if len(present):
            self._impl.remove(present)
            self._ids.delete(present)
            if self.store is not None:
                self.store.remove(present)
        return len(present)

    def search(
        self, xq, k: int, nprobe: int | None = None, allowed=None, rerank: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours of xq (nq, d) -> (D, I) numpy (nq, k), faiss conventions (module docstring).

        nprobe: IVF lists to scan (default: the index's nprobe). allowed: int64 ids the results must come
        from. rerank: re-score rerank_factor * k PQ candidates exactly from the float16 vectors (default:
        on when the index keeps vectors).
        """
        k = _check_positive(k, "k")
        nprobe = self.nprobe if nprobe is None else _check_positive(nprobe, "nprobe")
        if rerank is None:
            rerank = self.store is not None and self.kind != "flat"
        if rerank and self.store is None:
            raise ValueError("rerank=True needs the raw vectors: build the index with keep_vectors=True")
        if not self.is_trained:
            raise ValueError(f"the {type(self).__name__} must be trained before search(); call train(x) first")
        q = as_matrix(xq, self.d, "query", device=self.device)
        if allowed is not None:
            allowed = np.unique(as_ids(allowed, what="allowed ids"))
            allowed = allowed[self._ids.lookup(allowed) >= 0]
        nq = q.shape[0]
        if self.ntotal == 0 or (allowed is not None and len(allowed) == 0) or nq == 0:
            return self._public(np.full((nq, k), np.inf, np.float32), np.full((nq, k), -1, np.int64))
        kc = k * self.rerank_factor if rerank else k
        dist, ids = self._impl.search(q, kc, nprobe, allowed)
        if rerank:
            dist, ids = rerank_candidates(self.store, q, ids, k, self.metric)
        return self._public(dist, ids)

    def _public(self, dist: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return to_public(dist, ids, self.metric)

    def reconstruct(self, ids) -> np.ndarray:
        """float32 vectors (n, d) from the float16 store (keep_vectors=True)."""
        if self.store is None:
            raise ValueError("reconstruct() needs keep_vectors=True")
        return self.store.get(as_ids(ids))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Index contents as numpy arrays (codebooks, codes, ids); the store is persisted by its owner."""
        return {**self._impl.state_dict(), "next_id": np.array(self._next_id), "all_ids": self._ids.keys()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._impl.load_state_dict(state)
        self._ids = IdLookup()
        ids = np.asarray(state["all_ids"], np.int64)
        self._ids.insert(ids, np.zeros(len(ids), np.int64))
        self._next_id = int(state["next_id"])


def to_public(dist: np.ndarray, ids: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Internal (smaller is better, +inf pads) -> faiss conventions (ip similarities, FLT_MAX pads)."""
    missing = (ids < 0) | ~np.isfinite(dist)
    D = (-dist if metric == "ip" else dist).astype(np.float32)
    D[missing] = -FLT_MAX if metric == "ip" else FLT_MAX
    I = np.where(missing, -1, ids).astype(np.int64)
    return D, I


def _check_positive(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


class FlatIndex(_Index):
    """Exact search (float32 vectors); the recall reference."""

    kind = "flat"

    def _make_impl(self):
        if self.backend == "faiss":
            return FaissIndex("flat", self.d, self.metric)
        return TorchFlat(self.d, self.metric, self.device)


class PQIndex(_Index):
    """Exhaustive product-quantized search: m bytes per vector (+ 8 for the id)."""

    kind = "pq"

    def __init__(
        self,
        d: int,
        m: int,
        nbits: int = 8,
        metric: str = "ip",
        backend: str | None = None,
        device: str | torch.device | None = None,
        seed: int = 0,
        **kw,
    ):
        check_pq_params(d, m, nbits)
        self.m, self.nbits, self.seed = m, nbits, seed
        super().__init__(d, metric, backend, device, **kw)

    def _make_impl(self):
        if self.backend == "faiss":
            return FaissIndex("pq", self.d, self.metric, m=self.m, nbits=self.nbits, seed=self.seed)
        return TorchPQ(self.d, self.m, self.nbits, self.metric, self.device, self.seed)


class IVFPQIndex(_Index):
    """Inverted file (nlist coarse centroids) + PQ codes of the residuals, probing nprobe lists per query."""

    kind = "ivfpq"

    def __init__(
        self,
        d: int,
        nlist: int,
        m: int,
        nbits: int = 8,
        metric: str = "ip",
        backend: str | None = None,
        device: str | torch.device | None = None,
        nprobe: int = 8,
        seed: int = 0,
        **kw,
    ):
        check_pq_params(d, m, nbits)
        self.nlist = _check_positive(nlist, "nlist")
        self.m, self.nbits, self.seed = m, nbits, seed
        super().__init__(d, metric, backend, device, nprobe=nprobe, **kw)

    def _make_impl(self):
        if self.backend == "faiss":
            return FaissIndex(
                "ivfpq",
                self.d,
                self.metric,
                nlist=self.nlist,
                m=self.m,
                nbits=self.nbits,
                seed=self.seed,
                device=self.device,
            )
        return TorchIVFPQ(self.d, self.nlist, self.m, self.nbits, self.metric, self.device, self.seed)
