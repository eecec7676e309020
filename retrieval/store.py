"""The document store: one SQLite file, the source of truth for every collection.

Tables: collections (name, config JSON), documents (text, metadata JSON, source), chunks (character
span, text, the embedding as a float16 blob), tombstones (chunks deleted since the last index
snapshot) and, per collection, chunks_fts_<cid>: an FTS5 full-text index of its chunk texts (bm25;
porter stemming over unicode61 words) whose rowid is the chunk id. The vector index is derived data:
it can always be rebuilt from the chunk rows without re-embedding anything. The full-text index is
written in the same transaction as the chunks it covers (and deleted with them), so the crash
guarantees below hold for both.

The tables and their versions are schema.py's: opening a file made by an older release migrates it in
place (schema.open_schema); one from a newer release is refused.

Sequence numbers. One counter (table meta, key "seq") numbers every change: a new chunk takes the
next value as its id (which is also its id in the vector index) and a deleted chunk leaves a
tombstone with the next value. Ids are never reused, so an index snapshot taken at `last_seq` is
brought up to date by adding the chunks with id > last_seq and removing the tombstoned chunks with
seq > last_seq.

Durability: WAL with synchronous=FULL, so a committed transaction survives a kill or power loss;
a document is written in one transaction (old chunks tombstoned and deleted, new rows in), so after
a crash it is either complete or absent.

Concurrency: one write connection behind a lock (SQLite allows one writer anyway) and one read
connection per thread (WAL readers do not block the writer nor each other).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.schema import create_fts, fts_table, open_schema

# --- vectors -------------------------------------------------------------------------------------


def vectors_to_blobs(x: np.ndarray) -> list[bytes]:
    """(n, d) float -> n float16 blobs."""
    x16 = np.ascontiguousarray(x, dtype=np.float16)
    return [row.tobytes() for row in x16]


def blobs_to_vectors(blobs: list[bytes], d: int) -> np.ndarray:
    """n float16 blobs -> (n, d) float32."""
    if not blobs:
        return np.zeros((0, d), dtype=np.float32)
    x = np.frombuffer(b"".join(blobs), dtype=np.float16).reshape(len(blobs), d)
    return x.astype(np.float32)


# --- the store -----------------------------------------------------------------------------------


class StoreReader:
    """A read-only view of a store file that another process may own (a running server holds the data directory's
    lock; SQLite's WAL lets this reader see committed data without blocking it). Never creates or writes anything.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no pqrag store at {path}")
        # mode=ro: a reader must never write to the service's store (Store() would create tables).
        self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def collection_names(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT name FROM collections ORDER BY name")]

    def collection_cid(self, name: str) -> int | None:
        row = self._conn.execute("SELECT cid FROM collections WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def document_texts(self, cid: int) -> Iterator[str]:
        """Whole document texts of a collection, in document id order."""
        for (text,) in self._conn.execute("SELECT text FROM documents WHERE cid = ? ORDER BY doc_id", (cid,)):
            yield text

    def last_seq(self) -> int:
        """The change counter: it moves whenever any collection's documents change."""
        (v,) = self._conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        return int(v)


class Store:
    """SQLite store at `path`. Methods taking `conn` run inside a `write()` transaction."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._write_lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._writer = self._connect()
        try:
            with self.write() as conn:
                # the schema version this file had, when opening migrated it (None: it was current, or new)
                self.migrated_from = open_schema(conn, self.path)
        except BaseException:
            self._writer.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; write() issues BEGIN IMMEDIATE itself.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a COMMIT that returned is on disk
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    def close(self) -> None:
        with self._write_lock, self._readers_lock:
            if self._closed:
                return
            self._closed = True
            for c in self._readers:
                c.close()
            self._readers.clear()
            try:
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._writer.close()

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("the store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            with self._readers_lock:
                self._readers.append(conn)
            self._local.conn = conn
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed (durably) on exit, rolled back on an exception."""
        with self._write_lock:
            if self._closed:
                raise RuntimeError("the store is closed")
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several queries (a read transaction on this thread's connection)."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    # --- sequence numbers --------------------------------------------------------------------------

    @staticmethod
    def allocate_seq(conn: sqlite3.Connection, n: int) -> int:
        """Reserve n sequence numbers in this transaction; returns the first (they are first..first+n-1)."""
        (last,) = conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        conn.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (last + n,))
        return last + 1

    def last_seq(self) -> int:
        (v,) = self._reader().execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        return int(v)

    # --- collections -------------------------------------------------------------------------------

    def insert_collection(
        self, conn: sqlite3.Connection, name: str, config: dict, dimension: int, created_at: float
    ) -> int:
        cur = conn.execute(
            "INSERT INTO collections (name, config, dimension, created_at) VALUES (?, ?, ?, ?)",
            (name, json.dumps(config, sort_keys=True), dimension, created_at),
        )
        cid = int(cur.lastrowid)
        create_fts(conn, cid)
        return cid

    @staticmethod
    def update_collection_config(conn: sqlite3.Connection, cid: int, config: dict) -> None:
        """Replace a collection's config JSON (its settings that leave the stored vectors as they are)."""
        conn.execute("UPDATE collections SET config = ? WHERE cid = ?", (json.dumps(config, sort_keys=True), cid))

    def collection_rows(self) -> list[dict[str, Any]]:
        rows = (
            self._reader()
            .execute("SELECT cid, name, config, dimension, created_at FROM collections ORDER BY name")
            .fetchall()
        )
        return [
            {"cid": r[0], "name": r[1], "config": json.loads(r[2]), "dimension": r[3], "created_at": r[4]} for r in rows
        ]

    def collection_exists(self, conn: sqlite3.Connection, name: str) -> bool:
        return conn.execute("SELECT 1 FROM collections WHERE name = ?", (name,)).fetchone() is not None

    @staticmethod
    def delete_collection(conn: sqlite3.Connection, cid: int) -> None:
        conn.execute(f"DROP TABLE IF EXISTS {fts_table(cid)}")
        for table in ("chunks", "documents", "tombstones", "collections"):
            conn.execute(f"DELETE FROM {table} WHERE cid = ?", (cid,))

    # --- documents ---------------------------------------------------------------------------------

    def put_document(
        self,
        conn: sqlite3.Connection,
        cid: int,
        doc_id: str,
        text: str,
        metadata: str,
        source: str,
        spans: list[tuple[int, int]],
        chunk_texts: list[str],
        blobs: list[bytes],
        now: float,
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """Insert or replace one document and its chunks. Returns (new chunk ids, old chunk ids, replaced).

        metadata: JSON text. spans: (start, end) per chunk. blobs: float16 vectors per chunk.
        """
        assert len(spans) == len(chunk_texts) == len(blobs)
        old_ids = self.delete_document(conn, cid, doc_id)
        replaced = old_ids is not None
        if old_ids is None:
            old_ids = np.zeros(0, dtype=np.int64)
        conn.execute(
            "INSERT INTO documents (cid, doc_id, text, metadata, source, chunk_count, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (cid, doc_id, text, metadata, source, len(spans), now, now),
        )
        first = self.allocate_seq(conn, len(spans)) if spans else 0
        new_ids = np.arange(first, first + len(spans), dtype=np.int64)
        conn.executemany(
            "INSERT INTO chunks (id, cid, doc_id, ord, start_char, end_char, text, vector) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (int(new_ids[o]), cid, doc_id, o, s, e, t, b)
                for o, ((s, e), t, b) in enumerate(zip(spans, chunk_texts, blobs))
            ],
        )
        conn.executemany(
            f"INSERT INTO {fts_table(cid)} (rowid, text) VALUES (?, ?)",
            [(int(i), t) for i, t in zip(new_ids, chunk_texts)],
        )
        return new_ids, old_ids, replaced

    def delete_document(self, conn: sqlite3.Connection, cid: int, doc_id: str) -> np.ndarray | None:
        """Delete a document and tombstone its chunks; returns their ids, or None if it did not exist."""
        if conn.execute("SELECT 1 FROM documents WHERE cid = ? AND doc_id = ?", (cid, doc_id)).fetchone() is None:
            return None
        ids = np.array(
            [r[0] for r in conn.execute("SELECT id FROM chunks WHERE cid = ? AND doc_id = ?", (cid, doc_id))],
            dtype=np.int64,
        )
        if len(ids):
            first = self.allocate_seq(conn, len(ids))
            conn.executemany(
                "INSERT INTO tombstones (seq, cid, chunk_id) VALUES (?, ?, ?)",
                [(first + i, cid, int(c)) for i, c in enumerate(ids)],
            )
            # external content: FTS5 removes a row's terms given the text it indexed, which `chunks` still holds
            table = fts_table(cid)
            conn.execute(
                f"INSERT INTO {table} ({table}, rowid, text) SELECT 'delete', id, text FROM chunks "
                "WHERE cid = ? AND doc_id = ?",
                (cid, doc_id),
            )
            conn.execute("DELETE FROM chunks WHERE cid = ? AND doc_id = ?", (cid, doc_id))
        conn.execute("DELETE FROM documents WHERE cid = ? AND doc_id = ?", (cid, doc_id))
        return ids

    def get_document(self, cid: int, doc_id: str, include_chunks: bool = False) -> dict[str, Any] | None:
        with self.read() as conn:
            row = conn.execute(
                "SELECT text, metadata, source, chunk_count, created_at, updated_at FROM documents "
                "WHERE cid = ? AND doc_id = ?",
                (cid, doc_id),
            ).fetchone()
            if row is None:
                return None
            doc = {
                "id": doc_id,
                "text": row[0],
                "metadata": json.loads(row[1]),
                "source": row[2],
                "chunk_count": row[3],
                "created_at": row[4],
                "updated_at": row[5],
                "chunks": None,
            }
            if include_chunks:
                doc["chunks"] = [
                    {"chunk_id": r[0], "start": r[1], "end": r[2], "text": r[3]}
                    for r in conn.execute(
                        "SELECT id, start_char, end_char, text FROM chunks WHERE cid = ? AND doc_id = ? ORDER BY ord",
                        (cid, doc_id),
                    )
                ]
        return doc

    def counts(self, cid: int) -> tuple[int, int]:
        """(documents, chunks) of a collection."""
        with self.read() as conn:
            (nd,) = conn.execute("SELECT COUNT(*) FROM documents WHERE cid = ?", (cid,)).fetchone()
            (nc,) = conn.execute("SELECT COUNT(*) FROM chunks WHERE cid = ?", (cid,)).fetchone()
        return int(nd), int(nc)

    # --- search support ----------------------------------------------------------------------------

    def allowed_ids(self, cid: int, where: str, params: list[Any]) -> np.ndarray:
        """Chunk ids of the documents of collection cid whose metadata satisfies `where` (compile_filter)."""
        cur = self._reader().execute(
            f"SELECT c.id FROM documents d JOIN chunks c ON c.cid = d.cid AND c.doc_id = d.doc_id "
            f"WHERE d.cid = ? AND {where}",
            [cid, *params],
        )
        return np.fromiter((r[0] for r in cur), dtype=np.int64)

    def lexical_search(self, cid: int, match: str, limit: int, where: str = "1", params: list[Any] = ()) -> np.ndarray:
        """(n, 2) float64 rows of (chunk id, bm25 score; higher is better), best first, at most `limit`, for an FTS5
        query `match` (lexical.match_query builds it: user text never reaches here raw) and a metadata condition on
        documents `d` (compile_filter)."""
        table = fts_table(cid)
        join = ""
        if where != "1":
            join = f" JOIN chunks c ON c.id = {table}.rowid JOIN documents d ON d.cid = c.cid AND d.doc_id = c.doc_id"
        rows = (
            self._reader()
            .execute(
                # FTS5's bm25() is negated (smaller is better): ORDER BY it, report its negation
                f"SELECT {table}.rowid, -bm25({table}) FROM {table}{join} WHERE {table} MATCH ? AND {where} "
                f"ORDER BY bm25({table}) LIMIT ?",
                [match, *params, limit],
            )
            .fetchall()
        )
        return np.array(rows, dtype=np.float64).reshape(-1, 2)

    def chunk_rows(self, cid: int, ids: list[int]) -> dict[int, dict[str, Any]]:
        """Chunk id -> hit fields (doc id, text, span, document metadata and source)."""
        out: dict[int, dict[str, Any]] = {}
        conn = self._reader()
        for i in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
            part = ids[i : i + 500]
            q = ",".join("?" * len(part))
            for r in conn.execute(
                f"SELECT c.id, c.doc_id, c.text, c.start_char, c.end_char, d.metadata, d.source "
                f"FROM chunks c JOIN documents d ON d.cid = c.cid AND d.doc_id = c.doc_id "
                f"WHERE c.cid = ? AND c.id IN ({q})",
                [cid, *part],
            ):
                out[int(r[0])] = {
                    "doc_id": r[1],
                    "text": r[2],
                    "start": r[3],
                    "end": r[4],
                    "metadata": json.loads(r[5]),
                    "source": r[6],
                }
        return out

    # --- index rebuild and replay ------------------------------------------------------------------

    def iter_vectors(
        self, cid: int, d: int, after_seq: int = 0, batch: int = 8192
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids (n,), vectors (n, d) float32) of the chunks with id > after_seq, in id order, in batches."""
        conn = self._reader()
        last = after_seq
        while True:
            rows = conn.execute(
                "SELECT id, vector FROM chunks WHERE cid = ? AND id > ? ORDER BY id LIMIT ?", (cid, last, batch)
            ).fetchall()
            if not rows:
                return
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            yield ids, blobs_to_vectors([r[1] for r in rows], d)
            last = int(ids[-1])

    def tombstoned_ids(self, cid: int, after_seq: int) -> np.ndarray:
        """Chunks that existed at `after_seq` (id <= after_seq) and were deleted since (seq > after_seq)."""
        rows = self._reader().execute(
            "SELECT chunk_id FROM tombstones WHERE cid = ? AND seq > ? AND chunk_id <= ?", (cid, after_seq, after_seq)
        )
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def prune_tombstones(self, cid: int, upto_seq: int) -> None:
        """Forget tombstones an index snapshot at `upto_seq` already reflects."""
        with self.write() as conn:
            conn.execute("DELETE FROM tombstones WHERE cid = ? AND seq <= ?", (cid, upto_seq))
