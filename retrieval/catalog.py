"""Collections: every collection of one data directory, and the directory's lifetime.

    with Collections("data") as colls:                   # data/pqrag.sqlite3 + data/indexes/<cid>-<name>/
        notes = colls.create("notes")                    # a retrieval.collection.Collection
        colls.get("notes").search("what is ...?", k=5)
        colls.update("notes", reader_threshold=-1.5)     # UPDATABLE_SETTINGS only; None: back to the default

One process at a time owns a data directory (an exclusive flock on data_dir/LOCK). Opening it opens the SQLite
store and every collection (each index restored from its snapshot plus the store, see recovery.py) and
removes index directories left by a collection whose deletion was interrupted. The manager's lock guards its
name table and the swap of a collection's config by `update`; a collection's own work runs under that collection's
lock.

`document_texts` and `collection_version` read a collection without owning the directory (the trainer does, while
a server may own it).
"""

from __future__ import annotations

import bisect
import dataclasses
import fcntl
import os
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from common.checks import optional_positive_int, positive_int
from common.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, quote
from retrieval.chunker import ChunkerConfig
from retrieval.collection import Collection, CollectionConfig
from retrieval.embedder import Embedder, check_model_name, get_embedder
from retrieval.fusion import MODES
from retrieval.store import Store, StoreReader
from retrieval.validation import check_min_similarity, check_reader_threshold, validate_name
from retrieval.vector_index import IndexConfig

__all__ = [
    "Collections",
    "DB_FILE",
    "INDEX_DIR",
    "MAX_PAGE_SIZE",
    "UPDATABLE_SETTINGS",
    "collection_version",
    "document_texts",
]

DB_FILE = "pqrag.sqlite3"
INDEX_DIR = "indexes"
MAX_PAGE_SIZE = 1000  # collections per list_page: the default and the most one page may hold
# What Collections.update may change: how a collection is searched and answered. The other settings (embedder,
# dimension, index, chunker) shape the vectors it stores: changing one takes a new collection and a re-ingest.
UPDATABLE_SETTINGS = ("search_mode", "grounding", "reader_threshold", "min_similarity")


def _checked_settings(config: CollectionConfig) -> CollectionConfig:
    """The one check of the UPDATABLE_SETTINGS, at create and at update: config with reader_threshold and
    min_similarity as floats, or InvalidArgumentError naming the setting."""
    if config.search_mode not in MODES:
        raise InvalidArgumentError(f"search_mode must be one of {', '.join(MODES)}, got {quote(config.search_mode)}")
    if config.grounding not in (None, "free", "quote", "extract"):  # rag.request.GROUNDINGS (rag is above us)
        raise InvalidArgumentError(f"grounding must be free, quote or extract, got {quote(config.grounding)}")
    return dataclasses.replace(
        config,
        reader_threshold=check_reader_threshold(config.reader_threshold),
        min_similarity=check_min_similarity(config.min_similarity),
    )


class Collections:
    """Every collection under one data directory: data_dir/pqrag.sqlite3 and data_dir/indexes/.

    device: where embedders run (None: CUDA when available). model_dirs: where the embedders collections name
    are found, besides the bundled default (retrieval.embedder; a name is never a path). snapshot_every: changed chunks between
    index snapshots (they are also taken on close and after the index trains).
    One process at a time owns a data directory (an exclusive lock on data_dir/LOCK).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        device: str | None = None,
        snapshot_every: int = 10_000,
        model_dirs: tuple[str | os.PathLike, ...] = (),
    ):
        self.model_dirs = tuple(model_dirs)
        snapshot_every = positive_int(snapshot_every, "snapshot_every")
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

    def _open(self, row: Mapping[str, Any], embedder: Embedder | None = None) -> Collection:
        index_dir = self._index_dir(row["cid"], row["name"])
        return Collection(
            self._store, row, index_dir, self.device, self.snapshot_every, embedder, model_dirs=self.model_dirs
        )

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
        config.embedder = check_model_name(config.embedder, self.model_dirs)  # a name; PermissionDeniedError
        embedder = get_embedder(config.embedder, device=self.device, model_dirs=self.model_dirs)
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
        config = _checked_settings(config)

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
            coll = self._open(row, embedder)
            self._collections[name] = coll
        return coll

    def get(self, name: str) -> Collection:
        self._require_open()
        validate_name(name)  # a name that could never exist is the caller's mistake, and it has a length limit
        with self._lock:
            coll = self._collections.get(name)
        if coll is None:
            raise NotFoundError(f"collection {name!r} not found")
        return coll

    def update(self, name: str, /, **settings: Any) -> Collection:
        """Change the settings of a collection that leave its stored vectors as they are (UPDATABLE_SETTINGS:
        search_mode, grounding, reader_threshold, min_similarity) and return it. Only the settings given change; None
        puts one back to its default (search_mode: hybrid; grounding: the server's; reader_threshold: the reader's own;
        min_similarity: no cut). They are checked as create checks them and committed to the store before the
        collection's config is swapped for the new one under the manager's lock: a request reads either the old config
        or the new one, never a mix."""
        self._require_open()
        validate_name(name)
        unknown = [k for k in settings if k not in UPDATABLE_SETTINGS]
        if unknown:
            raise InvalidArgumentError(
                f"cannot update {quote(', '.join(unknown))}: a collection's updatable settings are "
                f"{', '.join(UPDATABLE_SETTINGS)}; the others (embedder, dimension, index, chunker) shape its stored "
                "vectors, so changing one needs a new collection (create it and ingest the documents again)"
            )
        defaults = CollectionConfig()
        changes = {k: getattr(defaults, k) if v is None else v for k, v in settings.items()}
        with self._lock:
            self._require_open()
            coll = self._collections.get(name)
            if coll is None:
                raise NotFoundError(f"collection {name!r} not found")
            config = _checked_settings(dataclasses.replace(coll.config, **changes))
            if config != coll.config:
                with self._store.write() as conn:
                    self._store.update_collection_config(conn, coll.cid, config.to_dict())
                coll.config = config  # one reference swapped: readers that took the old config keep a whole one
        return coll

    def list(self) -> list[Collection]:
        """Every collection, by name."""
        self._require_open()
        with self._lock:
            return [self._collections[n] for n in sorted(self._collections)]

    def names(self) -> list[str]:
        return [c.name for c in self.list()]

    def list_page(self, page_size: int | None = None, page_token: str = "") -> tuple[list[Collection], str]:
        """One page of collections by name, and the token of the next page ("" after the last one).

        page_size: 1..MAX_PAGE_SIZE (None: MAX_PAGE_SIZE). page_token: "" for the first page, else the token the
        previous page returned: the last name on it, so collections created or deleted between pages skip nothing.
        """
        size = optional_positive_int(page_size, "page_size", MAX_PAGE_SIZE) or MAX_PAGE_SIZE
        if not isinstance(page_token, str):
            raise InvalidArgumentError(f"page_token must be a string, got {type(page_token).__name__}")
        if page_token:
            validate_name(page_token)  # the last name of the previous page
        colls = self.list()
        start = bisect.bisect_right([c.name for c in colls], page_token) if page_token else 0
        page = colls[start : start + size]
        more = start + size < len(colls)
        return page, (page[-1].name if more else "")

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._collections

    def delete(self, name: str) -> None:
        """Remove a collection: its rows, its index files, and the name (free for a new create)."""
        self._require_open()
        validate_name(name)
        with self._lock:
            coll = self._collections.get(name)
            if coll is None:
                raise NotFoundError(f"collection {name!r} not found")
            coll.drop()  # waits for the collection's in-flight write or search
            del self._collections[name]
        # After the commit: a crash before this leaves an orphan directory, removed at the next open.
        shutil.rmtree(coll.index_dir, ignore_errors=True)

    def check(self) -> None:
        """Raise when the store cannot be read or written (the server's health probe: a read, and an empty write
        transaction that takes SQLite's write lock)."""
        self._require_open()
        self._store.last_seq()
        with self._store.write():
            pass

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


# --- reading a collection without owning the data directory ----------------------------------------------------


def _reader(data_dir: str | os.PathLike, collection: str) -> tuple[StoreReader, int]:
    db = Path(data_dir) / DB_FILE
    if not db.exists():
        raise NotFoundError(f"no pqrag store at {db} (is it the data directory `pqrag serve` uses?)")
    reader = StoreReader(db)
    cid = reader.collection_cid(collection)
    if cid is None:
        names = reader.collection_names()
        reader.close()
        raise NotFoundError(f"collection {collection!r} not found in {db}; it has {names}")
    return reader, cid


def document_texts(data_dir: str | os.PathLike, collection: str) -> Iterator[str]:
    """The whole texts of a collection's documents (not its chunks: chunks overlap, documents do not), in document
    id order. Read-only, so it works while a server owns the data directory (the trainer's --from-collection).
    A missing store or collection raises NotFoundError here, before the first text is read."""
    reader, cid = _reader(data_dir, collection)

    def texts() -> Iterator[str]:
        with reader:
            yield from reader.document_texts(cid)

    return texts()


def collection_version(data_dir: str | os.PathLike, collection: str) -> str:
    """A string that changes whenever the collection's documents may have changed (cache keys of derived data)."""
    reader, _ = _reader(data_dir, collection)
    with reader:
        return f"{(Path(data_dir) / DB_FILE).resolve()}:{collection}:{reader.last_seq()}"
