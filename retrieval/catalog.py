"""Collections: every collection of one data directory, and the directory's lifetime.

    with Collections("data") as colls:                   # data/pqrag.sqlite3 + data/indexes/<cid>-<name>/
        notes = colls.create("notes")                    # a retrieval.collection.Collection
        colls.get("notes").search("what is ...?", k=5)

One process at a time owns a data directory (an exclusive flock on data_dir/LOCK). Opening it opens the SQLite
store and every collection (each index restored from its snapshot plus the store, see durable_index.py) and
removes index directories left by a collection whose deletion was interrupted. The manager's lock guards its
name table only; a collection's own work runs under that collection's lock.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from retrieval.adaptive import IndexConfig
from retrieval.chunker import ChunkerConfig
from retrieval.collection import Collection, CollectionConfig
from retrieval.embedder import get_embedder, resolve_model_path
from retrieval.store import Store
from retrieval.validation import validate_name

__all__ = ["Collections", "DB_FILE", "INDEX_DIR"]

DB_FILE = "pqrag.sqlite3"
INDEX_DIR = "indexes"


class Collections:
    """Every collection under one data directory: data_dir/pqrag.sqlite3 and data_dir/indexes/.

    device: where embedders run (None: CUDA when available). snapshot_every: changed chunks between
    index snapshots (they are also taken on close and after the index trains).
    One process at a time owns a data directory (an exclusive lock on data_dir/LOCK).
    """

    def __init__(self, data_dir: str | os.PathLike, device: str | None = None, snapshot_every: int = 10_000):
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1, got {snapshot_every}")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / INDEX_DIR).mkdir(exist_ok=True)
        self._lock_file = open(self.data_dir / "LOCK", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock_file.close()
            raise RuntimeError(
                f"data directory {self.data_dir} is in use by another pqrag process "
                "(or another Collections object in this one); close it first"
            ) from exc
        self.device = device
        self.snapshot_every = snapshot_every
        self._lock = threading.Lock()
        self._collections: dict[str, Collection] = {}
        self._closed = False
        try:
            self._store = Store(self.data_dir / DB_FILE)
            for row in self._store.collection_rows():
                self._collections[row["name"]] = self._open(row)
            self._remove_orphan_index_dirs()
        except BaseException:
            self.close()
            raise

    def _index_dir(self, cid: int, name: str) -> Path:
        return self.data_dir / INDEX_DIR / f"{cid}-{name}"

    def _open(self, row: Mapping[str, Any]) -> Collection:
        return Collection(self._store, row, self._index_dir(row["cid"], row["name"]), self.device, self.snapshot_every)

    def _remove_orphan_index_dirs(self) -> None:
        """Index directories of collections deleted by a process that died before removing them."""
        live = {c.index_dir.name for c in self._collections.values()}
        for p in (self.data_dir / INDEX_DIR).iterdir():
            if p.name not in live:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError("the collections are closed")

    def create(self, name: str, config: CollectionConfig | None = None) -> Collection:
        """A new empty collection. Loads its embedder (to learn the dimension) and checks the config."""
        self._require_open()
        validate_name(name)
        config = dataclasses.replace(config) if config is not None else CollectionConfig()
        if not isinstance(config.index, IndexConfig) or not isinstance(config.chunker, ChunkerConfig):
            raise InvalidArgumentError("config.index must be an IndexConfig and config.chunker a ChunkerConfig")
        with self._lock:
            if name in self._collections:
                raise AlreadyExistsError(f"collection {name!r} already exists")
        # Outside the lock: loading a model takes seconds and must not stall the other collections.
        if config.embedder:
            config.embedder = resolve_model_path(config.embedder)  # absolute: restarts may run elsewhere
        embedder = get_embedder(config.embedder, device=self.device)
        if config.dimension is not None and config.dimension != embedder.dimension:
            raise InvalidArgumentError(
                f"dimension {config.dimension} does not match the embedder's {embedder.dimension}; "
                "leave it unset to take the embedder's"
            )
        config.dimension = embedder.dimension
        if config.chunker.chunk_tokens > embedder.max_text_tokens:
            raise InvalidArgumentError(
                f"chunk_tokens {config.chunker.chunk_tokens} exceeds what the embedder reads "
                f"({embedder.max_text_tokens} word pieces); use at most that"
            )
        try:
            config.index.validate(embedder.dimension)
        except (ValueError, TypeError) as exc:
            raise InvalidArgumentError(f"invalid index configuration: {exc}") from exc

        with self._lock:
            self._require_open()
            if name in self._collections:
                raise AlreadyExistsError(f"collection {name!r} already exists")
            now = time.time()
            with self._store.write() as conn:
                cid = self._store.insert_collection(conn, name, config.to_dict(), embedder.dimension, now)
            index_dir = self._index_dir(cid, name)
            if index_dir.exists():  # cids are never reused, but be sure no stale snapshot is picked up
                shutil.rmtree(index_dir)
            row = {
                "cid": cid,
                "name": name,
                "config": config.to_dict(),
                "dimension": embedder.dimension,
                "created_at": now,
            }
            coll = self._open(row)
            coll._embedder = embedder
            self._collections[name] = coll
        return coll

    def get(self, name: str) -> Collection:
        self._require_open()
        with self._lock:
            coll = self._collections.get(name)
        if coll is None:
            raise NotFoundError(f"collection {name!r} not found")
        return coll

    def list(self) -> list[Collection]:
        """Every collection, by name."""
        self._require_open()
        with self._lock:
            return [self._collections[n] for n in sorted(self._collections)]

    def names(self) -> list[str]:
        return [c.name for c in self.list()]

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._collections

    def delete(self, name: str) -> None:
        """Remove a collection: its rows, its index files, and the name (free for a new create)."""
        self._require_open()
        with self._lock:
            coll = self._collections.get(name)
            if coll is None:
                raise NotFoundError(f"collection {name!r} not found")
            with coll._lock:  # waits for the collection's in-flight write or search
                with self._store.write() as conn:
                    self._store.delete_collection(conn, coll.cid)
                coll._closed = True
            del self._collections[name]
        # After the commit: a crash before this leaves an orphan directory, removed at the next open.
        shutil.rmtree(coll.index_dir, ignore_errors=True)

    def close(self, snapshot: bool = True) -> None:
        """Snapshot every index (unless snapshot=False) and close the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            colls = list(self._collections.values())
        for c in colls:
            c.close(snapshot=snapshot)
        if hasattr(self, "_store"):
            self._store.close()
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()

    def __enter__(self) -> Collections:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
