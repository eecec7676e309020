"""A collection's vector index kept in step with the SQLite store that is its source of truth.

    index, how = restore(store, cid, d, config, path)     # open: snapshot + replayed changes, or a rebuild
    index = apply(store, cid, index, removed, x, ids, snapshot_every)   # after the store committed a change
    save(store, cid, index)                               # snapshot, then forget the tombstones it reflects

The index (vector_index.VectorIndex) is derived from the float16 vectors stored with the chunks, so it never
holds anything the store does not. Opening loads the last snapshot and replays the chunks and tombstones newer
than its `last_seq`; without a usable snapshot (none, damaged, from another format, out of step) the index is
rebuilt from the stored vectors (exact until it trains again). Nothing is re-embedded. A snapshot is taken every
`snapshot_every` changed chunks, when the index trains, and on close (Collection); after one, older tombstones are
pruned from the store.

Not thread-safe on its own: the owning Collection holds its lock around every call.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np

from retrieval import snapshot
from retrieval.store import Store
from retrieval.vector_index import IndexConfig, VectorIndex

log = logging.getLogger("pqrag.collection")


def restore(store: Store, cid: int, d: int, config: IndexConfig, path: Path) -> tuple[VectorIndex, str]:
    """The index of collection `cid`, and how it came back: "snapshot" (plus replayed changes) or "store" (rebuilt).
    A rebuilt index is never saved yet (index.unsaved > 0), so the owner snapshots it on close."""
    if snapshot.exists(path):
        try:
            return _replay(store, cid, VectorIndex.load(path)), "snapshot"
        except Exception as exc:  # partial, damaged, from another format, or out of step
            log.warning(
                "index %s: snapshot unusable (%s: %s); rebuilding from the store", path, type(exc).__name__, exc
            )
    return rebuild(store, cid, d, config, path), "store"


def _replay(store: Store, cid: int, index: VectorIndex) -> VectorIndex:
    """Apply the deletions and additions newer than the snapshot's last_seq."""
    last_seq = int(index.last_seq)
    dead = store.tombstoned_ids(cid, last_seq)
    if len(dead):
        index.remove(dead)
    for ids, x in store.iter_vectors(cid, index.d, after_seq=last_seq):
        index.add(x, ids)
    _, n_chunks = store.counts(cid)
    if index.ntotal != n_chunks:
        raise ValueError(f"the index holds {index.ntotal} vectors but the store {n_chunks} chunks")
    log.info("index %s: snapshot at seq %d + %d replayed changes", index.path, last_seq, index.unsaved)
    return index


def rebuild(store: Store, cid: int, d: int, config: IndexConfig, path: Path) -> VectorIndex:
    """A new index (in a clean directory: its vector file lives there) filled from the store."""
    if path.exists():
        shutil.rmtree(path)
    index = VectorIndex(d, dataclasses.replace(config), path=path)
    for ids, x in store.iter_vectors(cid, d):
        index.add(x, ids)
    index.unsaved += 1  # a fresh index is worth a snapshot, even an empty one
    return index


def apply(
    store: Store, cid: int, index: VectorIndex, remove_ids: np.ndarray, x: np.ndarray, ids: np.ndarray, every: int
) -> VectorIndex:
    """Apply a change the store has committed: remove_ids out, x (n, d) in under ids (n,). Returns the index, or
    one rebuilt from the store if the update failed (never one left out of step). Saves it once `every` changes
    have accumulated."""
    try:
        if len(remove_ids):
            index.remove(remove_ids)
        if len(ids):
            index.add(x, ids)
    except Exception:
        log.exception("index %s: update failed; rebuilding it from the store", index.path)
        index = rebuild(store, cid, index.d, index.config, Path(index.path))
    if index.unsaved >= every:
        try:
            save(store, cid, index)
        except Exception:  # the change is committed; the next open replays it from the store
            log.exception("index %s: snapshot failed", index.path)
    return index


def save(store: Store, cid: int, index: VectorIndex) -> None:
    """Snapshot the index with the sequence number it reflects, then forget older tombstones. The caller holds the
    collection's lock, so no write of this collection is in flight."""
    last_seq = store.last_seq()
    index.save(last_seq=last_seq)
    store.prune_tombstones(cid, last_seq)
