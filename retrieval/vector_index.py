"""VectorIndex: one collection's vectors, searched exactly until a PQ index is trained, then approximately.

A new collection answers exactly from its float16 vectors. Training is the owner's call (`training_due()` says
when: `min_train_size` vectors, then each time the collection has grown `retrain_growth` times past its training
size): tuning.py measures candidate settings on the vectors themselves and the cheapest one that reaches the
recall target is installed, moving the index to approximate search (PQ or IVF-PQ codes, backend.py) + exact
re-ranking from the same float16 vectors. When no setting qualifies the index stays exact and tries again once the
collection has doubled.

Training can run off the owner's lock: `training_job()` (under the lock) takes the live rows as they are, `tune()`
(without it) reads them, since rows [0, n_rows) of a vector array are never rewritten (vectors.HalfStore), and
`install()` (under the lock again) brings the trained backend up to the vectors added and removed meanwhile.
`retrain()` does all three at once.

The float16 rows and the id -> row map live in one vectors.HalfStore: a memory-mapped file in the index's
directory (`vectors.<gen>.f16`), or memory when there is no directory. The backend keeps only codes.
`save()` writes one snapshot (snapshot.py: config, the trained parameters and their tuning report, the row -> id
table, the trained backend, and the caller's `last_seq`) atomically. The vector file's rows [0, n_rows) are never
rewritten after a snapshot names them (removals only tombstone rows; compaction writes a new generation), so after a
crash `load()` sees exactly the last snapshot and the owner replays its rows newer than `last_seq` (recovery.py).

Results follow faiss: ``search`` returns numpy ``(D, I)``, both (nq, k) (vectors.to_public). Not thread-safe:
the owner serialises calls (Collection holds its lock around every one, tune() aside).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from common.checks import is_int
from common.device import default_device
from common.fs import atomic_write
from retrieval import snapshot
from retrieval.backend import Backend, make_backend
from retrieval.index_config import IndexConfig, IndexParams
from retrieval.pq import as_ids, as_matrix
from retrieval.tuning import Tuned, tune
from retrieval.vectors import HalfStore, exact_search, to_public
from retrieval.vectors import rerank as rerank_candidates

__all__ = ["IndexConfig", "IndexParams", "TrainingJob", "VectorIndex"]

# Exact search keeps a float32 copy of the float16 rows between queries up to this size (a small collection's
# vectors: converting every row per query was most of a search); larger "flat" indexes stream the rows.
EXACT_CACHE_BYTES = 256 << 20


@dataclass
class TrainingJob:
    """The vectors an index had when a training started: rows of `data` (read without the owner's lock) and ids."""

    data: np.ndarray  # (n_rows, d) float16: the vector array as it was (its rows are never rewritten)
    rows: np.ndarray  # (n,) live rows at the start
    ids: np.ndarray  # (n,) their ids
    force: bool  # an explicit retrain: take the best measured setting even below the target

    def vectors(self) -> np.ndarray:
        """(n, d) float32."""
        out = np.empty((len(self.rows), self.data.shape[1]), np.float32)
        for s in range(0, len(self.rows), 65536):
            out[s : s + 65536] = self.data[self.rows[s : s + 65536]]
        return out

    def tune(self, config: IndexConfig, cancelled: Callable[[], bool] = lambda: False) -> Tuned:
        return tune(self.vectors(), self.ids, config, force=self.force, cancelled=cancelled)


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
        self.params: IndexParams | None = None  # what the backend was trained with (None while exact)
        self.tuning: dict | None = None  # the last tuning's report (tuning.tune), installed or not
        self.attempted_size = 0  # ntotal at the last tuning that found no qualifying setting
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

    def training_due(self) -> bool:
        """Whether the owner should (re)train now: min_train_size vectors reached while exact, or the collection grew
        retrain_growth times past the training size; after a tuning that found nothing, not before ntotal doubled."""
        c = self.config
        if c.kind == "flat" or self.ntotal < 2 * self.attempted_size:
            return False
        if self._backend is None:
            return self.ntotal >= c.min_train_size
        return c.retrain_growth is not None and self.ntotal >= c.retrain_growth * max(1, self.trained_size)

    @property
    def nprobe(self) -> int | None:
        """IVF lists a search visits unless it says otherwise (None unless trained as IVF-PQ)."""
        return self.params.nprobe if self.params is not None and self.params.kind == "ivfpq" else None

    def stats(self) -> dict:
        p = self.params
        return {
            "kind": p.kind if p is not None else "flat" if self.config.kind == "flat" else "exact",
            "trained": self.is_trained,
            "ntotal": self.ntotal,
            "d": self.d,
            "metric": self.config.metric,
            "params": p.to_dict() if p is not None else None,
            "backend": self._backend.name if self._backend is not None else None,
            "trained_size": self.trained_size,
            "tuning": self.tuning,  # holds the chosen setting's measured recall and bytes per vector
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
        Returns the ids. Never trains: see training_due()."""
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

    def training_job(self, force: bool = False) -> TrainingJob:
        """The vectors to train on, as they are now (call under the owner's lock; tune them without it)."""
        rows = self.vectors.live_rows()
        return TrainingJob(self.vectors.view(), rows, self.vectors.row_ids()[rows].copy(), force)

    def install(self, job: TrainingJob, tuned: Tuned) -> bool:
        """Serve from a tuned backend (under the owner's lock), brought up to the vectors added and removed since
        `job` was taken. Returns whether it was installed (False: no setting qualified; the index stays as it is)."""
        self.tuning = tuned.report
        if tuned.backend is None:
            self.attempted_size = len(job.ids)
            return False
        backend, now = tuned.backend, self.vectors.ids()
        gone = np.setdiff1d(job.ids, now)
        if len(gone):
            backend.remove(gone)
        new = np.setdiff1d(now, job.ids)
        for s in range(0, len(new), 65536):
            part = new[s : s + 65536]
            backend.add(torch.from_numpy(self.vectors.get(part)).to(backend.device), part)
        self._backend, self.params = backend, tuned.params
        self.trained_size, self.attempted_size = len(job.ids), 0
        self.unsaved += 1  # a new trained state is worth a snapshot
        self._exact = None  # searches go through the trained index from now on: free the copy
        return True

    def retrain(self) -> dict:
        """Tune and train the approximate index on the current vectors now, whatever their number, taking the best
        setting measured even below the recall target. Returns the tuning report; ValueError when there are too few
        vectors to train anything."""
        if self.config.kind == "flat":
            return {}
        job = self.training_job(force=True)
        tuned = job.tune(self.config)
        if tuned.backend is None:
            raise ValueError(f"cannot train a {self.config.kind or 'pq'} index: {tuned.report['reason']}")
        self.install(job, tuned)
        return tuned.report

    def _new_backend(self, params: IndexParams, backend: str | None) -> Backend:
        c = self.config
        return make_backend(
            params.kind, self.d, c.metric, params.m, params.nbits, params.nlist, c.seed, backend, c.device
        )

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
        kc = k * self.params.rerank_factor if rerank else k
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
            "attempted_size": self.attempted_size,
            "params": self.params.to_dict() if self.params is not None else None,
            "tuning": self.tuning,
            "trained": self._backend is not None,
            # the trained state is backend specific (a faiss blob or torch arrays): reload with the same one
            "backend": self._backend.name if self._backend is not None else None,
        }
        arrays = {"row_ids": row_ids}
        if self._backend is not None:
            arrays.update({f"index.{k}": v for k, v in self._backend.state_dict().items()})
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
        self.attempted_size, self.tuning = int(meta["attempted_size"]), meta["tuning"]
        row_ids = np.asarray(arrays["row_ids"], np.int64)
        self.vectors.restore(row_ids)
        # snapshots before next_id was saved: after the largest id they name
        self._next_id = int(meta.get("next_id", int(row_ids.max(initial=-1)) + 1))
        if meta["trained"]:
            self.params = IndexParams.from_dict(meta["params"])
            backend = self._new_backend(self.params, meta["backend"])
            backend.load_state_dict({k[len("index.") :]: v for k, v in arrays.items() if k.startswith("index.")})
            self._backend = backend
        snapshot.remove_other_generations(self.path, self._gen)  # a compaction that crashed before its snapshot
        return self
