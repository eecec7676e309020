"""VectorIndex: one collection's vectors, searched exactly until a PQ index can be trained, then approximately.

A new collection has too few vectors to train codebooks (k-means with ksub = 256 centroids per sub-space
wants ~39 points per centroid, faiss warns below that), so it answers exactly from its float16 vectors.
Once `min_train_size` vectors are in, the add() that crosses the threshold trains the configured backend
(IVF-PQ or PQ, backend.py) on them and moves to approximate search + exact re-ranking from the same float16
vectors; `retrain()` rebuilds it on demand, and it rebuilds by itself when the collection has grown
`retrain_growth` times past its training size (codebooks and nlist chosen for 10k vectors fit 1M poorly).

The float16 rows and the id -> row map live in one vectors.HalfStore: a memory-mapped file in the index's
directory (`vectors.<gen>.f16`), or memory when there is no directory. The backend keeps only codes.
`save()` writes one snapshot (snapshot.py: config, the row -> id table, the trained backend, and the caller's
`last_seq`) atomically. The vector file's rows [0, n_rows) are never rewritten after a snapshot names them
(removals only tombstone rows; compaction writes a new generation), so after a crash `load()` sees exactly
the last snapshot and the owner replays its rows newer than `last_seq` (recovery.py).

Results follow faiss: ``search`` returns numpy ``(D, I)``, both (nq, k) (vectors.to_public). Not thread-safe:
the owner serialises calls (Collection holds its lock around every one).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from common.checks import is_int, optional_positive_int, positive_int
from common.device import default_device
from common.errors import InvalidArgumentError
from common.fs import atomic_write
from retrieval import snapshot
from retrieval.backend import Backend, make_backend, resolve_backend
from retrieval.pq import as_ids, as_matrix, check_metric, check_pq_params, divisors
from retrieval.vectors import HalfStore, exact_search, to_public
from retrieval.vectors import rerank as rerank_candidates

KINDS = ("ivfpq", "pq", "flat")
# Exact search keeps a float32 copy of the float16 rows between queries up to this size (a small collection's
# vectors: converting every row per query was most of a search); larger "flat" indexes stream the rows.
EXACT_CACHE_BYTES = 256 << 20


@dataclass
class IndexConfig:
    kind: str = "ivfpq"  # "ivfpq" | "pq" | "flat" (always exact)
    metric: str = "ip"  # "ip" for normalised embeddings, or "l2"
    m: int | None = None  # sub-quantizers; None: d // 8 (48 for 384-d MiniLM); must divide d
    nbits: int = 8  # bits per sub-quantizer code (ksub = 2**nbits), <= 8
    nlist: int | None = None  # IVF lists; None: ~4 * sqrt(n) at training time, at most n / 39
    nprobe: int | None = None  # lists scanned per query; None: max(16, 3 * sqrt(nlist)) (auto_nprobe)
    backend: str | None = None  # "torch" | "faiss" | None (measured default per device, backend.default_backend)
    rerank: bool = True  # re-score PQ candidates exactly from the float16 vectors
    rerank_factor: int = 8  # candidates re-scored = rerank_factor * k
    min_points_per_centroid: int = 39  # training waits for this many vectors per centroid
    retrain_growth: float | None = 4.0  # retrain when ntotal >= growth * training size; None: never
    seed: int = 0
    device: str | None = None  # torch backend device; None: CUDA when available

    def resolved_m(self, d: int) -> int:
        """m, defaulting to d // 8 (or the divisor of d closest to it)."""
        if self.m is not None:
            return self.m
        return min(divisors(d), key=lambda v: (abs(v - d / 8), -v))

    def validate(self, d: int) -> None:
        """Checked once, where a configuration enters (Collections.create); ValueError saying what to fix."""
        if self.kind not in KINDS:
            raise InvalidArgumentError(f"index kind must be one of {KINDS}, got {self.kind!r}")
        check_metric(self.metric)
        check_pq_params(d, self.resolved_m(d), self.nbits)
        resolve_backend(self.backend, self.device)
        optional_positive_int(self.nlist, "nlist")
        optional_positive_int(self.nprobe, "nprobe")
        positive_int(self.rerank_factor, "rerank_factor")
        positive_int(self.min_points_per_centroid, "min_points_per_centroid")
        if self.retrain_growth is not None and self.retrain_growth <= 1:
            raise InvalidArgumentError(f"retrain_growth must be > 1 or None, got {self.retrain_growth!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> IndexConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def auto_nlist(n: int, min_points_per_centroid: int = 39) -> int:
    """~4 sqrt(n) lists, but never fewer than min_points_per_centroid vectors per list on average."""
    return int(max(1, min(4 * math.sqrt(n), n // min_points_per_centroid, 65536)))


def auto_nprobe(nlist: int) -> int:
    """~3 sqrt(nlist) lists, at least 16: the scanned fraction shrinks as collections grow.

    Measured (bench/retrieval.py): MiniLM embeddings do not cluster sharply, so IVF needs a wide probe.
    On SciFact (nlist 132) nDCG@10 with re-ranking is 4.8% below exact at nprobe 16 but 0.9% at 34 (auto);
    on 100k synthetic mixtures (nlist 1024) recall@10 with re-ranking is 0.952 / 0.967 / 0.974 / 0.984
    at nprobe 8 / 16 / 32 / 96 (auto).
    """
    return max(1, min(nlist, max(16, round(3 * math.sqrt(nlist)))))


class VectorIndex:
    """Exact search until trainable, then IVF-PQ / PQ with exact float16 re-ranking (module docstring)."""

    def __init__(self, d: int, config: IndexConfig | None = None, path: str | os.PathLike | None = None):
        """A new, empty index; in `path` (created if needed, and not holding a snapshot yet) or in memory."""
        self._setup(d, config if config is not None else IndexConfig(), path, gen=0)
        if self.path is not None:
            if snapshot.exists(self.path):
                raise ValueError(f"{self.path} already holds an index; use VectorIndex.load({self.path!r})")
            os.makedirs(self.path, exist_ok=True)

    def _setup(self, d: int, config: IndexConfig, path: str | os.PathLike | None, gen: int) -> None:
        assert is_int(d) and d > 0, d
        self.d, self.config = int(d), config
        self.m = config.resolved_m(self.d)
        self.ksub = 1 << config.nbits
        self.path = os.fspath(path) if path is not None else None
        self.last_seq = 0  # the owner's change number this index reflects (saved with it)
        self.trained_size = 0
        self.unsaved = 0  # vectors added or removed since the last save() or load()
        self._gen = gen
        self._next_id = 0  # add() without ids continues from here
        self._backend: Backend | None = None  # None while searching exactly
        self.vectors = HalfStore(self.d, snapshot.vectors_file(self.path, gen) if self.path is not None else None)
        # float32 copy of the rows for exact search, with the store's (layout, n_rows) it was taken at
        self._exact: tuple[tuple[int, int], torch.Tensor] | None = None

    # -- state
    @property
    def ntotal(self) -> int:
        return self.vectors.ntotal

    def __len__(self) -> int:
        return self.ntotal

    @property
    def is_trained(self) -> bool:
        return self._backend is not None

    @property
    def device(self) -> torch.device:
        if self._backend is not None:
            return self._backend.device
        return torch.device(self.config.device) if self.config.device else default_device()

    @property
    def min_train_size(self) -> int | None:
        """Vectors needed before the index trains itself (None for kind "flat": never)."""
        c = self.config
        if c.kind == "flat":
            return None
        centroids = self.ksub if c.kind == "pq" or c.nlist is None else max(self.ksub, c.nlist)
        return c.min_points_per_centroid * centroids

    @property
    def nprobe(self) -> int | None:
        """IVF lists a search visits unless it says otherwise (None unless trained as IVF-PQ)."""
        if self._backend is None or not self._backend.nlist:
            return None
        return self.config.nprobe if self.config.nprobe is not None else auto_nprobe(self._backend.nlist)

    def stats(self) -> dict:
        b = self._backend
        return {
            "kind": self.config.kind,
            "trained": self.is_trained,
            "ntotal": self.ntotal,
            "d": self.d,
            "m": self.m,
            "nbits": self.config.nbits,
            "metric": self.config.metric,
            "nlist": (b.nlist or None) if b is not None else None,
            "nprobe": self.nprobe,
            "backend": b.name if b is not None else None,
            "trained_size": self.trained_size,
            "min_train_size": self.min_train_size,
            "last_seq": self.last_seq,
        }

    def index_bytes(self) -> int:
        """Bytes of the trained state (codes, ids, codebooks; 0 untrained): what a snapshot holds besides the float16
        rows (bench/retrieval.py's bytes per vector)."""
        if self._backend is None:
            return 0
        return sum(np.asarray(v).nbytes for v in self._backend.state_dict().values())

    # -- mutation
    def add(self, x, ids=None) -> np.ndarray:
        """Add vectors x (n, d) under new int64 ids (n,) (default: consecutive ids after the largest added so far).
        Returns the ids. May train or retrain the index (module docstring)."""
        xt = as_matrix(x, self.d, "vectors")
        if ids is None:
            ids = np.arange(self._next_id, self._next_id + xt.shape[0], dtype=np.int64)
        ids = as_ids(ids, xt.shape[0])
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids passed to add() contain duplicates")
        dup = self.vectors.contains(ids)
        if dup.any():
            raise ValueError(f"ids already in the index: {ids[dup][:10].tolist()} (remove them first)")
        if len(ids) == 0:
            return ids
        self.vectors.add(ids, xt)
        self.unsaved += len(ids)
        self._next_id = max(self._next_id, int(ids.max()) + 1)
        if self._backend is not None:
            self._backend.add(xt.to(self._backend.device), ids)
            growth = self.config.retrain_growth
            if growth is not None and self.ntotal >= growth * max(1, self.trained_size):
                self._train()
        elif self.min_train_size is not None and self.ntotal >= self.min_train_size:
            self._train()
        return ids

    def remove(self, ids) -> int:
        """Remove vectors by id (unknown ids are ignored); returns how many were removed."""
        ids = np.unique(as_ids(ids))
        ids = ids[self.vectors.contains(ids)]
        n = self.vectors.remove(ids)
        self.unsaved += n
        if self._backend is not None and n:
            self._backend.remove(ids)
        if self.path is None and self.vectors.tombstones > max(1024, self.vectors.n_rows // 2):
            self.vectors.compact()  # in memory nothing refers to row numbers, so compact freely
        return n

    def retrain(self) -> None:
        """Train (or re-train) the approximate index on the current vectors, whatever their number."""
        if self.config.kind == "flat":
            return
        need = self.ksub if self.config.kind == "pq" else max(self.ksub, self.config.nlist or 1)
        if self.ntotal < need:
            raise ValueError(
                f"cannot train a {self.config.kind} index with nbits={self.config.nbits} "
                f"on {self.ntotal} vectors: needs at least {need}"
            )
        self._train()

    def _new_backend(self, nlist: int, backend: str | None) -> Backend:
        c = self.config
        return make_backend(c.kind, self.d, c.metric, self.m, c.nbits, nlist, c.seed, backend, c.device)

    def _train(self) -> None:
        c, n = self.config, self.ntotal
        rows = self.vectors.live_rows()
        row_ids = self.vectors.row_ids()
        nlist = 0
        if c.kind == "ivfpq":
            nlist = c.nlist if c.nlist is not None else max(1, min(auto_nlist(n, c.min_points_per_centroid), n))
        backend = self._new_backend(nlist, c.backend)
        # k-means subsamples to 256 points per centroid anyway: do not convert more than that
        max_train = 256 * max(self.ksub, nlist)
        train_rows = rows
        if len(rows) > max_train:
            gen = np.random.default_rng(c.seed)
            train_rows = np.sort(gen.choice(rows, max_train, replace=False))
        backend.train(self.vectors.get_rows(train_rows, backend.device))
        for s in range(0, len(rows), 65536):
            r = rows[s : s + 65536]
            backend.add(self.vectors.get_rows(r, backend.device), row_ids[r])
        self._backend, self.trained_size = backend, n
        self._exact = None  # searches go through the trained index from now on: free the copy

    # -- search
    def search(
        self, xq, k: int, nprobe: int | None = None, allowed=None, rerank: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest ids for queries xq (nq, d) -> (D, I) numpy (nq, k) with faiss conventions.

        Exact while untrained (or kind "flat"); otherwise PQ / IVF-PQ candidates (nprobe lists; default: the
        index's), re-ranked exactly from the float16 vectors when `rerank` (default: config.rerank).
        allowed: int64 ids results must come from. k and nprobe were checked where the search entered (Collection).
        """
        assert is_int(k) and k >= 1 and (nprobe is None or (is_int(nprobe) and nprobe >= 1)), (k, nprobe)
        k = int(k)
        q = as_matrix(xq, self.d, "query", device=self.device)
        metric = self.config.metric
        if allowed is not None:
            allowed = np.unique(as_ids(allowed, what="allowed ids"))
            allowed = allowed[self.vectors.contains(allowed)]
        if self._backend is None:
            rows = None
            if allowed is not None:
                rows = np.sort(self.vectors.rows_of(allowed))
            elif self.vectors.tombstones:
                rows = self.vectors.live_rows()
            dist, r = exact_search(q, self._exact_rows(), k, metric, rows=rows)
            row_ids = np.append(self.vectors.row_ids(), -1)  # row -1 (padding) maps to id -1
            return to_public(dist.cpu().numpy(), row_ids[r.cpu().numpy()], metric)
        nq = q.shape[0]
        if self.ntotal == 0 or nq == 0 or (allowed is not None and len(allowed) == 0):
            return to_public(np.full((nq, k), np.inf, np.float32), np.full((nq, k), -1, np.int64), metric)
        rerank = self.config.rerank if rerank is None else rerank
        kc = k * self.config.rerank_factor if rerank else k
        dist, ids = self._backend.search(q.to(self._backend.device), kc, nprobe or self.nprobe or 1, allowed)
        if rerank:
            dist, ids = rerank_candidates(self.vectors, q, ids, k, metric)
        return to_public(dist, ids, metric)

    def _exact_rows(self) -> torch.Tensor | np.ndarray:
        """Every stored row (tombstoned ones included) for exact search: a cached float32 tensor on the search
        device while that fits EXACT_CACHE_BYTES, else the float16 rows themselves (converted block by block).
        The copy is retaken when rows were added or renumbered; removals only tombstone, which the search skips."""
        if self.vectors.n_rows * self.d * 4 > EXACT_CACHE_BYTES:
            return self.vectors.view()
        key = (self.vectors.layout, self.vectors.n_rows)
        if self._exact is None or self._exact[0] != key:
            self._exact = key, torch.from_numpy(np.asarray(self.vectors.view(), dtype=np.float32)).to(self.device)
        return self._exact[1]

    def get(self, ids) -> np.ndarray:
        """float32 vectors (n, d) (from float16) for ids; KeyError for unknown ids."""
        return self.vectors.get(as_ids(ids))

    def ids(self) -> np.ndarray:
        return self.vectors.ids()

    # -- persistence
    def save(self, path: str | os.PathLike | None = None, last_seq: int | None = None) -> None:
        """Atomically snapshot to `path` (default: this index's directory) with the caller's last_seq.

        In the index's own directory the vector file is shared with the snapshot (rows are append-only);
        elsewhere a compacted copy of the vectors is written next to the snapshot.
        """
        if last_seq is not None:
            assert is_int(last_seq), last_seq
            self.last_seq = int(last_seq)
        target = os.fspath(path) if path is not None else self.path
        if target is None:
            raise ValueError("this index has no directory: pass save(path)")
        os.makedirs(target, exist_ok=True)
        own = self.path is not None and os.path.realpath(target) == os.path.realpath(self.path)
        if own:
            if self.vectors.tombstones > max(1024, self.vectors.n_rows // 4):
                self._gen += 1
                self.vectors.compact(snapshot.vectors_file(target, self._gen))
            self.vectors.flush()
            gen, row_ids = self._gen, self.vectors.row_ids().copy()
        else:
            gen, row_ids = self._write_copy(target)
        meta = {
            "d": self.d,
            "config": self.config.to_dict(),
            "gen": gen,
            "last_seq": self.last_seq,
            "next_id": self._next_id,
            "trained_size": self.trained_size,
            "trained": self._backend is not None,
            # the trained state is backend specific (a faiss blob or torch arrays): reload with the same one
            "backend": self._backend.name if self._backend is not None else None,
        }
        arrays = {"row_ids": row_ids}
        if self._backend is not None:
            arrays.update({f"index.{k}": v for k, v in self._backend.state_dict().items()})
            if self._backend.nlist:
                arrays["nlist"] = np.array(self._backend.nlist)
        snapshot.write(target, meta, arrays)
        snapshot.remove_other_generations(target, gen)
        if own:
            self.unsaved = 0

    def _write_copy(self, target: str) -> tuple[int, np.ndarray]:
        """Live vectors into a fresh vector file in another directory (atomically); returns (gen, row ids)."""
        gen = max(snapshot.generations(target), default=-1) + 1
        rows = self.vectors.live_rows()
        with atomic_write(snapshot.vectors_file(target, gen)) as f:
            for s in range(0, len(rows), 65536):
                f.write(np.ascontiguousarray(self.vectors.view()[rows[s : s + 65536]], np.float16).tobytes())
        return gen, self.vectors.row_ids()[rows].copy()

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> VectorIndex:
        """Open the snapshot in `path`; the index then keeps working (and saving) in that directory."""
        meta, arrays = snapshot.read(path)
        config = IndexConfig.from_dict(meta["config"])
        if device is not None:
            config.device = device
        self = cls.__new__(cls)
        self._setup(int(meta["d"]), config, path, gen=int(meta["gen"]))
        self.last_seq, self.trained_size = int(meta["last_seq"]), int(meta["trained_size"])
        row_ids = np.asarray(arrays["row_ids"], np.int64)
        self.vectors.restore(row_ids)
        # snapshots before next_id was saved: after the largest id they name
        self._next_id = int(meta.get("next_id", int(row_ids.max(initial=-1)) + 1))
        if meta["trained"]:
            backend = self._new_backend(int(arrays.get("nlist", 0)), meta["backend"])
            backend.load_state_dict({k[len("index.") :]: v for k, v in arrays.items() if k.startswith("index.")})
            self._backend = backend
        snapshot.remove_other_generations(self.path, self._gen)  # a compaction that crashed before its snapshot
        return self
