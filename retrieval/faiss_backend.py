"""The faiss backend (backend.py): IndexPQ in IndexIDMap2, IndexIVFPQ with add_with_ids.

Filters go inside the search through SearchParameters(sel=IDSelectorBatch); IndexPQ takes no search
parameters, so a filtered PQ search scans a temporary IndexPQ over the allowed vectors' codes. Results
are returned in the internal convention (vectors.py: smaller is better, +inf / -1 padding).
"""

from __future__ import annotations

import numpy as np
import torch

try:  # faiss is a declared dependency, but keep the torch backend usable without it
    import faiss
except ImportError:  # pragma: no cover
    faiss = None


def single_threaded() -> None:
    """Let faiss use one core on the calling thread (OpenMP's thread count is per thread): the background training
    calls it, leaving the other cores to searches."""
    if faiss is not None:
        faiss.omp_set_num_threads(1)


class FaissBackend:
    """A faiss PQ or IVF-PQ index with external ids; filters via SearchParameters(sel=IDSelectorBatch)."""

    name = "faiss"

    def __init__(self, kind: str, d: int, metric: str, m: int, nbits: int, nlist: int, seed: int, device: torch.device):
        self.kind, self.d, self.metric, self.device = kind, d, metric, device
        self.nlist = nlist if kind == "ivfpq" else 0
        mt = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        if kind == "ivfpq":
            self.quantizer = faiss.IndexFlat(d, mt)
            self.index = faiss.IndexIVFPQ(self.quantizer, d, nlist, m, nbits, mt)
            self.index.cp.seed = self.index.pq.cp.seed = seed
        else:
            self.base = faiss.IndexPQ(d, m, nbits, mt)
            self.base.pq.cp.seed = seed
            self.index = faiss.IndexIDMap2(self.base)
        # the tuner measures what a small training set gives (tuning.py): silence faiss's "provide at least 39 x k
        # training points" warning, which is all min_points_per_centroid does
        for cp in (self.index.pq.cp, self.index.cp) if kind == "ivfpq" else (self.base.pq.cp,):
            cp.min_points_per_centroid = 1
        self.use_gpu = device.type == "cuda" and faiss.get_num_gpus() > 0
        self._gpu = None
        self._pq_cache = None  # (positions' ids, codes) of an IndexPQ, for filtered PQ search

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def train(self, x: torch.Tensor, coarse: torch.Tensor | None = None) -> None:
        if coarse is not None and self.kind == "ivfpq":
            c = coarse.cpu().numpy().astype(np.float32)
            if self.metric == "ip":  # faiss assigns by inner product: unit centroids, as its own spherical training
                c = c / np.linalg.norm(c, axis=1, keepdims=True).clip(1e-12)
            self.quantizer.add(c)  # a full quantizer: faiss's IVF train skips the coarse k-means
        elif self.kind == "ivfpq" and x.shape[0] < self.nlist:
            raise ValueError(
                f"training an IVF index with nlist={self.nlist} needs at least {self.nlist} vectors, got {x.shape[0]}"
            )
        self.index.train(x.cpu().numpy())

    def _changed(self) -> None:
        self._gpu = self._pq_cache = None

    def add(self, x, ids):
        self.index.add_with_ids(x.cpu().numpy(), ids)
        self._changed()

    def remove(self, ids):
        self.index.remove_ids(faiss.IDSelectorBatch(ids))
        self._changed()

    def _search_index(self, q: np.ndarray, k: int, params=None, gpu_ok: bool = False):
        """Search the GPU clone when there is one (filters and removals stay on the CPU index)."""
        if gpu_ok and self.use_gpu:
            try:
                if self._gpu is None:
                    self._gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, self.index)
                return self._gpu.search(q, k, params=params)
            except RuntimeError:  # an index type or parameter faiss-gpu does not take: stay on the CPU
                self.use_gpu, self._gpu = False, None
        return self.index.search(q, k, params=params)

    def search(self, q, k, nprobe, allowed):
        qn = q.cpu().numpy()
        if self.kind == "pq" and allowed is not None:
            return self._search_pq_subset(qn, k, allowed)
        sel = faiss.IDSelectorBatch(allowed) if allowed is not None else None
        if self.kind == "ivfpq":
            params = faiss.SearchParametersIVF(nprobe=int(min(nprobe, self.nlist)))
            if sel is not None:
                params.sel = sel
            D, I = self._search_index(qn, k, params, gpu_ok=sel is None)
            if sel is not None:
                short = np.flatnonzero((I >= 0).sum(1) < min(k, len(allowed)))
                if len(short):  # probed lists held too few allowed vectors: scan every list
                    D[short], I[short] = self.index.search(
                        qn[short], k, params=faiss.SearchParametersIVF(nprobe=self.nlist, sel=sel)
                    )
        else:
            D, I = self._search_index(
                qn, k, faiss.SearchParameters(sel=sel) if sel is not None else None, gpu_ok=sel is None
            )
        return self._internal(D, I)

    def _internal(self, D: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = -D if self.metric == "ip" else D.copy()
        d[I < 0] = np.inf
        return d.astype(np.float32), I

    def _search_pq_subset(self, qn, k, allowed):
        """IndexPQ takes no SearchParameters: search a temporary IndexPQ over the allowed vectors' codes."""
        if self._pq_cache is None:
            cs = self.base.code_size
            codes = faiss.vector_to_array(self.base.codes).reshape(-1, cs)
            self._pq_cache = (faiss.vector_to_array(self.index.id_map), codes)
        pos_ids, codes = self._pq_cache
        pos = np.flatnonzero(np.isin(pos_ids, allowed))
        tmp = faiss.IndexPQ(self.d, self.base.pq.M, self.base.pq.nbits, self.base.metric_type)
        tmp.pq = self.base.pq
        tmp.is_trained = True
        tmp.add_sa_codes(np.ascontiguousarray(codes[pos]))
        D, I = tmp.search(qn, k)
        I = np.where(I >= 0, pos_ids[pos][I.clip(min=0)], -1)
        return self._internal(D, I)

    def state_dict(self):
        return {"faiss": faiss.serialize_index(self.index)}

    def load_state_dict(self, s):
        self.index = faiss.deserialize_index(np.ascontiguousarray(s["faiss"]))
        if self.kind == "ivfpq":
            self.quantizer = None  # owned by the deserialised index
        else:
            self.base = faiss.downcast_index(self.index.index)
        self._changed()
