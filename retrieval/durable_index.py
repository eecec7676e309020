"""DurableIndex: a collection's vector index kept in step with the SQLite store that is its source of truth.

    dix = DurableIndex(store, cid, "notes", d=384, config=IndexConfig(), path=Path("data/indexes/1-notes"))
    dix.apply(removed_ids, x, ids)       # after the store committed the change
    D, I = dix.index.search(xq, k)
    dix.close()                          # snapshot if anything changed

The index (adaptive.CollectionIndex) is derived from the float16 vectors stored with the chunks, so it never
holds anything the store does not. Opening loads the last snapshot and replays the chunks and tombstones
newer than its `last_seq`; without a usable snapshot (none, damaged, from another version, out of step) the
index is rebuilt from the stored vectors. Nothing is re-embedded. A snapshot is taken every `snapshot_every`
changed chunks, when the index trains, and on close; after one, older tombstones are pruned from the store.

Not thread-safe on its own: the owning Collection holds its lock around every call.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np

from retrieval.adaptive import SNAPSHOT, CollectionIndex, IndexConfig
from retrieval.store import Store

log = logging.getLogger("pqrag.collection")


class DurableIndex:
    def __init__(
        self, store: Store, cid: int, name: str, dimension: int, config: IndexConfig, path: Path, snapshot_every: int
    ):
        self._store = store
        self.cid = cid
        self.name = name  # for log messages
        self.dimension = dimension
        self.config = config
        self.path = path
        self.snapshot_every = snapshot_every
        self.dirty = 0  # chunks added or removed since the last snapshot
        # How the index was restored when opened: "snapshot" (plus replayed changes) or "store" (rebuilt).
        self.restored_from = "store"
        self.index = self._open()

    @property
    def state(self) -> str:
        return "trained" if self.index.is_trained else "exact"

    # --- opening -----------------------------------------------------------------------------------

    def _open(self) -> CollectionIndex:
        """The snapshot brought up to date from the store, or an index rebuilt from the stored vectors."""
        if (self.path / SNAPSHOT).exists():
            try:
                return self._replay(CollectionIndex.load(self.path))
            except Exception as exc:  # partial, damaged, from another version, or out of step
                log.warning(
                    "collection %s: index snapshot unusable (%s: %s); rebuilding from the store",
                    self.name,
                    type(exc).__name__,
                    exc,
                )
        return self._rebuild()

    def _replay(self, index: CollectionIndex) -> CollectionIndex:
        """Apply the deletions and additions newer than the snapshot's last_seq."""
        last_seq = int(index.last_seq)
        dead = self._store.tombstoned_ids(self.cid, last_seq)
        if len(dead):
            index.remove(dead)
        added = 0
        for ids, x in self._store.iter_vectors(self.cid, self.dimension, after_seq=last_seq):
            index.add(x, ids)
            added += len(ids)
        _, n_chunks = self._store.counts(self.cid)
        if index.ntotal != n_chunks:
            raise ValueError(f"the index holds {index.ntotal} vectors but the store {n_chunks} chunks")
        self.dirty = added + len(dead)
        self.restored_from = "snapshot"
        log.info("collection %s: snapshot at seq %d + %d replayed changes", self.name, last_seq, self.dirty)
        return index

    def _rebuild(self) -> CollectionIndex:
        """A new index (in a clean directory: its vector file lives there) filled from the store."""
        if self.path.exists():
            shutil.rmtree(self.path)
        index = CollectionIndex(self.dimension, dataclasses.replace(self.config), path=self.path)
        n = 0
        for ids, x in self._store.iter_vectors(self.cid, self.dimension):
            index.add(x, ids)
            n += len(ids)
        self.dirty = n + 1  # a fresh index is worth a snapshot
        return index

    # --- changes -----------------------------------------------------------------------------------

    def apply(self, remove_ids: np.ndarray, x: np.ndarray, ids: np.ndarray) -> None:
        """Apply a change the store has committed. If the index fails it is rebuilt from the store rather
        than left out of step."""
        state = self.state
        try:
            if len(remove_ids):
                self.index.remove(remove_ids)
            if len(ids):
                self.index.add(x, ids)
        except Exception:
            log.exception("collection %s: index update failed; rebuilding it from the store", self.name)
            self.index = self._rebuild()
        # Snapshots are periodic, but training is worth saving at once.
        self.dirty += len(remove_ids) + len(ids)
        if self.dirty >= self.snapshot_every or self.state != state:
            try:
                self.snapshot()
            except Exception:  # the change is committed; the next open replays it from the store
                log.exception("collection %s: index snapshot failed", self.name)

    def snapshot(self) -> None:
        """Save the index with the sequence number it reflects, then forget older tombstones. The caller holds
        the collection's lock, so no write of this collection is in flight."""
        last_seq = self._store.last_seq()
        self.index.save(last_seq=last_seq)
        self.dirty = 0
        self._store.prune_tombstones(self.cid, last_seq)

    def retrain(self) -> None:
        """Retrain the quantizers on the vectors held now, and save the result."""
        self.index.retrain()
        self.snapshot()

    def close(self, snapshot: bool = True) -> None:
        if snapshot and self.dirty:
            try:
                self.snapshot()
            except Exception:  # the store still has everything: the next open replays it
                log.exception("collection %s: snapshot on close failed", self.name)
