"""CollectionIndex: one collection's vector index that grows from exact search to a trained PQ index.

A new collection has too few vectors to train codebooks (k-means with ksub = 256 centroids per sub-space
wants ~39 points per centroid, faiss warns below that), so it answers exactly from its float16 vectors.
Once `min_train_size` vectors are in, the add() that crosses the threshold trains the configured index
(IVF-PQ or PQ) on them and moves to approximate search + exact re-ranking from the same float16 vectors;
`retrain()` rebuilds it on demand, and it rebuilds by itself when the collection has grown
`retrain_growth` times past its training size (codebooks and nlist chosen for 10k vectors fit 1M poorly).

The raw vectors live in a float16 memory-mapped file in the collection's directory (`vectors.<gen>.f16`),
or in memory when there is no directory. `save()` writes one snapshot file (`index.npz`: config, the
row -> id table, the trained index, and the caller's `last_seq`) to a temp file, fsyncs it and
os.replace()s it in. The vector file's rows [0, n_rows) are never rewritten after a snapshot names them
(removals only tombstone rows; compaction writes a new generation), so after a crash `load()` sees
exactly the last snapshot and the owner replays its rows newer than `last_seq`.

All public methods take an internal lock: one writer or reader at a time (torch releases the GIL).
"""

from __future__ import annotations

import glob
import json
import math
import os
import threading
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from retrieval.index import IVFPQIndex, PQIndex, resolve_backend, to_public
from retrieval.pq import as_ids, as_matrix, check_metric, check_pq_params, default_device, divisors
from retrieval.vectors import HalfStore, exact_search
from retrieval.vectors import rerank as rerank_candidates

KINDS = ("ivfpq", "pq", "flat")
SNAPSHOT = "index.npz"
FORMAT_VERSION = 1
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
    backend: str | None = None  # "torch" | "faiss" | None (measured default per device)
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
        if self.kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {self.kind!r}")
        check_metric(self.metric)
        check_pq_params(d, self.resolved_m(d), self.nbits)
        resolve_backend(self.backend, self.device)
        for name in ("nlist", "nprobe"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None (automatic), got {v!r}")
        if not isinstance(self.rerank_factor, int) or self.rerank_factor < 1:
            raise ValueError(f"rerank_factor must be an integer >= 1, got {self.rerank_factor!r}")
        if self.min_points_per_centroid < 1:
            raise ValueError(f"min_points_per_centroid must be >= 1, got {self.min_points_per_centroid!r}")
        if self.retrain_growth is not None and self.retrain_growth <= 1:
            raise ValueError(f"retrain_growth must be > 1 or None, got {self.retrain_growth!r}")

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


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CollectionIndex:
    """Exact search until trainable, then IVF-PQ / PQ with exact float16 re-ranking (module docstring)."""

    def __init__(self, d: int, config: IndexConfig | None = None, path: str | os.PathLike | None = None):
        if not isinstance(d, (int, np.integer)) or d <= 0:
            raise ValueError(f"dimension d must be a positive integer, got {d!r}")
        self.d = int(d)
        self.config = config if config is not None else IndexConfig()
        self.config.validate(self.d)
        self.m = self.config.resolved_m(self.d)
        self.ksub = 1 << self.config.nbits
        self.path = os.fspath(path) if path is not None else None
        self.last_seq = 0
        self._gen = 0
        self._lock = threading.RLock()
        self.index: PQIndex | IVFPQIndex | None = None  # None while searching exactly
        self.trained_size = 0
        if self.path is not None:
            os.makedirs(self.path, exist_ok=True)
            if os.path.exists(os.path.join(self.path, SNAPSHOT)):
                raise ValueError(f"{self.path} already holds an index; use CollectionIndex.load({self.path!r})")
        self.store = HalfStore(self.d, self._vectors_path(self._gen))
        # float32 copy of the rows for exact search, with the store's (layout, n_rows) it was taken at
        self._exact: tuple[tuple[int, int], torch.Tensor] | None = None

    def _vectors_path(self, gen: int, path: str | None = None) -> str | None:
        base = path if path is not None else self.path
        return None if base is None else os.path.join(base, f"vectors.{gen}.f16")

    # -- state
    @property
    def ntotal(self) -> int:
        return self.store.ntotal

    def __len__(self) -> int:
        return self.ntotal

    @property
    def is_trained(self) -> bool:
        return self.index is not None

    @property
    def device(self) -> torch.device:
        if self.index is not None:
            return self.index.device
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
        if not isinstance(self.index, IVFPQIndex):
            return None
        return self.config.nprobe if self.config.nprobe is not None else auto_nprobe(self.index.nlist)

    def stats(self) -> dict:
        with self._lock:
            return {
                "kind": self.config.kind,
                "trained": self.is_trained,
                "ntotal": self.ntotal,
                "d": self.d,
                "m": self.m,
                "nbits": self.config.nbits,
                "metric": self.config.metric,
                "nlist": getattr(self.index, "nlist", None),
                "nprobe": self.nprobe,
                "backend": self.index.backend if self.index is not None else None,
                "trained_size": self.trained_size,
                "min_train_size": self.min_train_size,
                "last_seq": self.last_seq,
            }

    # -- mutation
    def add(self, x, ids) -> None:
        """Add vectors x (n, d) under new int64 ids (n,). May train or retrain the index (module doc)."""
        with self._lock:
            xt = as_matrix(x, self.d, "vectors")
            ids = as_ids(ids, xt.shape[0])
            if len(np.unique(ids)) != len(ids):
                raise ValueError("ids passed to add() contain duplicates")
            dup = self.store.contains(ids)
            if dup.any():
                raise ValueError(f"ids already in the index: {ids[dup][:10].tolist()} (remove them first)")
            if len(ids) == 0:
                return
            self.store.add(ids, xt)
            if self.index is not None:
                self.index.add(xt, ids)
                growth = self.config.retrain_growth
                if growth is not None and self.ntotal >= growth * max(1, self.trained_size):
                    self._train()
            elif self.min_train_size is not None and self.ntotal >= self.min_train_size:
                self._train()

    def remove(self, ids) -> int:
        """Remove vectors by id (unknown ids are ignored); returns how many were removed."""
        with self._lock:
            ids = np.unique(as_ids(ids))
            n = self.store.remove(ids)
            if self.index is not None and n:
                self.index.remove(ids)
            if self.path is None and self.store.tombstones > max(1024, self.store.n_rows // 2):
                self.store.compact()  # in memory nothing refers to row numbers, so compact freely
            return n

    def retrain(self) -> None:
        """Train (or re-train) the approximate index on the current vectors, whatever their number."""
        with self._lock:
            if self.config.kind == "flat":
                return
            need = self.ksub if self.config.kind == "pq" else max(self.ksub, self.config.nlist or 1)
            if self.ntotal < need:
                raise ValueError(
                    f"cannot train a {self.config.kind} index with nbits={self.config.nbits} "
                    f"on {self.ntotal} vectors: needs at least {need}"
                )
            self._train()

    def _train(self) -> None:
        c, n = self.config, self.ntotal
        rows = self.store.live_rows()
        row_ids = self.store.row_ids()
        ksub = self.ksub
        if c.kind == "ivfpq":
            nlist = c.nlist if c.nlist is not None else max(1, min(auto_nlist(n, c.min_points_per_centroid), n))
            index = IVFPQIndex(
                self.d,
                nlist,
                self.m,
                c.nbits,
                c.metric,
                backend=c.backend,
                device=c.device,
                nprobe=c.nprobe or auto_nprobe(nlist),
                seed=c.seed,
            )
        else:
            nlist = 0
            index = PQIndex(self.d, self.m, c.nbits, c.metric, backend=c.backend, device=c.device, seed=c.seed)
        # k-means subsamples to 256 points per centroid anyway: do not convert more than that
        max_train = 256 * max(ksub, nlist)
        train_rows = rows
        if len(rows) > max_train:
            gen = np.random.default_rng(c.seed)
            train_rows = np.sort(gen.choice(rows, max_train, replace=False))
        index.train(self.store.get_rows(train_rows))
        for s in range(0, len(rows), 65536):
            r = rows[s : s + 65536]
            index.add(self.store.get_rows(r), row_ids[r])
        self.index, self.trained_size = index, n
        self._exact = None  # searches go through the trained index from now on: free the copy

    # -- search
    def search(
        self, xq, k: int, nprobe: int | None = None, allowed=None, rerank: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest ids for queries xq (nq, d) -> (D, I) numpy (nq, k) with faiss conventions.

        Exact while untrained (or kind "flat"); otherwise PQ / IVF-PQ candidates, re-ranked exactly from
        the float16 vectors when `rerank` (default: config.rerank). allowed: int64 ids results must come from.
        """
        with self._lock:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
                raise ValueError(f"k must be a positive integer, got {k!r}")
            if nprobe is not None and (
                isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or nprobe < 1
            ):
                raise ValueError(f"nprobe must be a positive integer, got {nprobe!r}")
            q = as_matrix(xq, self.d, "query", device=self.device)
            metric = self.config.metric
            if allowed is not None:
                allowed = np.unique(as_ids(allowed, what="allowed ids"))
            if self.index is None:
                rows = None
                if allowed is not None:
                    rows = self.store.rows_of(allowed)
                    rows = np.sort(rows[rows >= 0])
                elif self.store.tombstones:
                    rows = self.store.live_rows()
                dist, r = exact_search(q, self._exact_rows(), int(k), metric, rows=rows)
                r = r.cpu().numpy()
                row_ids = np.append(self.store.row_ids(), -1)  # row -1 (padding) maps to id -1
                ids = row_ids[r]
                return to_public(dist.cpu().numpy(), ids, metric)
            rerank = self.config.rerank if rerank is None else rerank
            kc = int(k) * self.config.rerank_factor if rerank else int(k)
            D, I = self.index.search(q, kc, nprobe=nprobe or self.nprobe, allowed=allowed, rerank=False)
            if not rerank:
                return D, I
            dist, ids = rerank_candidates(self.store, q, I, int(k), metric)
            return to_public(dist, ids, metric)

    def _exact_rows(self) -> torch.Tensor | np.ndarray:
        """Every stored row (tombstoned ones included) for exact search: a cached float32 tensor on the search
        device while that fits EXACT_CACHE_BYTES, else the float16 rows themselves (converted block by block).
        The copy is retaken when rows were added or renumbered; removals only tombstone, which the search skips."""
        if self.store.n_rows * self.d * 4 > EXACT_CACHE_BYTES:
            return self.store.view()
        key = (self.store.layout, self.store.n_rows)
        if self._exact is None or self._exact[0] != key:
            self._exact = key, torch.from_numpy(np.asarray(self.store.view(), dtype=np.float32)).to(self.device)
        return self._exact[1]

    def get(self, ids) -> np.ndarray:
        """float32 vectors (n, d) (from float16) for ids; KeyError for unknown ids."""
        with self._lock:
            return self.store.get(as_ids(ids))

    def ids(self) -> np.ndarray:
        with self._lock:
            return self.store.ids()

    # -- persistence
    def save(self, path: str | os.PathLike | None = None, last_seq: int | None = None) -> None:
        """Atomically snapshot to `path` (default: this index's directory) with the caller's last_seq.

        In the index's own directory the vector file is shared with the snapshot (rows are append-only);
        elsewhere a compacted copy of the vectors is written next to the snapshot.
        """
        with self._lock:
            if last_seq is not None:
                if isinstance(last_seq, bool) or not isinstance(last_seq, (int, np.integer)):
                    raise ValueError(f"last_seq must be an integer, got {last_seq!r}")
                self.last_seq = int(last_seq)
            target = os.fspath(path) if path is not None else self.path
            if target is None:
                raise ValueError("this index has no directory: pass save(path)")
            os.makedirs(target, exist_ok=True)
            own = self.path is not None and os.path.realpath(target) == os.path.realpath(self.path)
            if own:
                if self.store.tombstones > max(1024, self.store.n_rows // 4):
                    self._gen += 1
                    self.store.compact(self._vectors_path(self._gen))
                self.store.flush()
                gen, row_ids = self._gen, self.store.row_ids().copy()
            else:
                gen, row_ids = self._write_copy(target)
            self._write_snapshot(target, gen, row_ids)
            for f in glob.glob(os.path.join(target, "vectors.*.f16")):
                if os.path.basename(f) != f"vectors.{gen}.f16":
                    os.remove(f)  # generations no snapshot refers to any more

    def _write_copy(self, target: str) -> tuple[int, np.ndarray]:
        """Live vectors into a fresh vector file in another directory (fsynced); returns (gen, row ids)."""
        old = [int(os.path.basename(f).split(".")[1]) for f in glob.glob(os.path.join(target, "vectors.*.f16"))]
        gen = max(old, default=-1) + 1
        rows = self.store.live_rows()
        with open(self._vectors_path(gen, target), "wb") as f:
            for s in range(0, len(rows), 65536):
                f.write(np.ascontiguousarray(self.store.view()[rows[s : s + 65536]], np.float16).tobytes())
            f.flush()
            os.fsync(f.fileno())
        return gen, self.store.row_ids()[rows].copy()

    def _write_snapshot(self, target: str, gen: int, row_ids: np.ndarray) -> None:
        meta = {
            "format": FORMAT_VERSION,
            "d": self.d,
            "config": self.config.to_dict(),
            "gen": gen,
            "last_seq": self.last_seq,
            "trained_size": self.trained_size,
            "trained": self.index is not None,
            # the trained state is backend specific (a faiss blob or torch arrays): reload with the same one
            "backend": self.index.backend if self.index is not None else None,
        }
        arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), "row_ids": row_ids}
        if self.index is not None:
            arrays.update({f"index.{k}": v for k, v in self.index.state_dict().items()})
            if isinstance(self.index, IVFPQIndex):
                arrays["nlist"] = np.array(self.index.nlist)
        final = os.path.join(target, SNAPSHOT)
        tmp = final + ".tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(target)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> CollectionIndex:
        """Open the snapshot in `path`; the index then keeps working (and saving) in that directory."""
        path = os.fspath(path)
        snap = os.path.join(path, SNAPSHOT)
        if not os.path.exists(snap):
            raise ValueError(f"no index snapshot in {path} (expected {SNAPSHOT})")
        with np.load(snap, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays["meta"].tobytes().decode())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported index snapshot format {meta.get('format')!r} in {path}")
        config = IndexConfig.from_dict(meta["config"])
        if device is not None:
            config.device = device
        self = cls.__new__(cls)
        self.d, self.config, self.path = int(meta["d"]), config, path
        self.config.validate(self.d)
        self.m, self.ksub = config.resolved_m(self.d), 1 << config.nbits
        self.last_seq, self._gen, self.trained_size = int(meta["last_seq"]), int(meta["gen"]), int(meta["trained_size"])
        self._lock = threading.RLock()
        self.store = HalfStore(self.d, self._vectors_path(self._gen))
        self.store.restore(np.asarray(arrays["row_ids"], np.int64))
        self._exact = None
        self.index = None
        if meta["trained"]:
            c, backend = config, meta["backend"]
            if c.kind == "ivfpq":
                nlist = int(arrays["nlist"])
                index = IVFPQIndex(
                    self.d,
                    nlist,
                    self.m,
                    c.nbits,
                    c.metric,
                    backend=backend,
                    device=c.device,
                    nprobe=c.nprobe or auto_nprobe(nlist),
                    seed=c.seed,
                )
            else:
                index = PQIndex(self.d, self.m, c.nbits, c.metric, backend=backend, device=c.device, seed=c.seed)
            state = {k[len("index.") :]: v for k, v in arrays.items() if k.startswith("index.")}
            index.load_state_dict(state)
            self.index = index
        for f in glob.glob(os.path.join(path, "vectors.*.f16")):
            if os.path.basename(f) != f"vectors.{self._gen}.f16":
                os.remove(f)  # a compaction that crashed before its snapshot landed
        return self
