"""The store's schema versions: a file made by the first release (schema 1, written here with that release's own SQL)
is migrated in place, its full-text index built from the stored chunks; a newer file is refused; the full-text index
follows the chunks transaction by transaction."""

import json
import sqlite3
import time

import numpy as np
import pytest

from common.errors import FailedPreconditionError
from retrieval.catalog import DB_FILE, Collections
from retrieval.schema import SCHEMA_VERSION, fts_table
from retrieval.store import Store, vectors_to_blobs
from tests.retrieval.helpers import D, new_collection, put

# The first release's schema, verbatim (retrieval/store.py before the full-text index): what its data dirs hold.
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS collections (
    cid INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, config TEXT NOT NULL,
    dimension INTEGER NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    cid INTEGER NOT NULL, doc_id TEXT NOT NULL, text TEXT NOT NULL, metadata TEXT NOT NULL, source TEXT NOT NULL,
    chunk_count INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, UNIQUE (cid, doc_id)
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, cid INTEGER NOT NULL, doc_id TEXT NOT NULL, ord INTEGER NOT NULL,
    start_char INTEGER NOT NULL, end_char INTEGER NOT NULL, text TEXT NOT NULL, vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks (cid, doc_id, ord);
CREATE INDEX IF NOT EXISTS chunks_by_collection ON chunks (cid, id);
CREATE TABLE IF NOT EXISTS tombstones (seq INTEGER PRIMARY KEY, cid INTEGER NOT NULL, chunk_id INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tombstones_by_collection ON tombstones (cid, seq);
INSERT OR IGNORE INTO meta (key, value) VALUES ('seq', 0), ('schema_version', 1);
"""
# The first release's CollectionConfig.to_dict() of a default collection (every default written out).
CONFIG_V1 = {
    "embedder": None,
    "dimension": 384,
    "index": {
        "kind": "ivfpq",
        "metric": "ip",
        "m": None,
        "nbits": 8,
        "nlist": None,
        "nprobe": None,
        "backend": None,
        "rerank": True,
        "rerank_factor": 8,
        "min_points_per_centroid": 39,
        "retrain_growth": 4.0,
        "seed": 0,
        "device": None,
    },
    "chunker": {"chunk_tokens": 200, "overlap_tokens": 40, "min_fill": 0.5},
}


def write_v1_store(path, docs: dict[str, str], vectors: np.ndarray, name: str = "old") -> None:
    """A schema-1 store holding one collection with one chunk per document, as the first release wrote it."""
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_V1)
    now = time.time()
    cid = conn.execute(
        "INSERT INTO collections (name, config, dimension, created_at) VALUES (?, ?, ?, ?)",
        (name, json.dumps(CONFIG_V1), vectors.shape[1], now),
    ).lastrowid
    for i, ((doc_id, text), blob) in enumerate(zip(docs.items(), vectors_to_blobs(vectors)), start=1):
        conn.execute(
            "INSERT INTO documents VALUES (?, ?, ?, ?, ?, 1, ?, ?)",
            (cid, doc_id, text, json.dumps({"n": i}), "", now, now),
        )
        conn.execute("INSERT INTO chunks VALUES (?, ?, ?, 0, 0, ?, ?, ?)", (i, cid, doc_id, len(text), text, blob))
    conn.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (len(docs),))
    conn.commit()
    conn.close()


DOCS = {
    "moon": "The Moon orbits the Earth and raises the tides.",
    "bread": "Sourdough bread rises thanks to wild yeast.",
    "chess": "The Sicilian Defence answers 1.e4 with c5.",
}


def test_a_first_release_store_is_migrated_in_place(tmp_path):
    path = tmp_path / "old.sqlite3"
    write_v1_store(path, DOCS, np.random.default_rng(0).standard_normal((3, D)).astype(np.float32))
    s = Store(path)
    assert s.migrated_from == 1
    with s.read() as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == SCHEMA_VERSION
    [row] = s.collection_rows()
    hits = s.lexical_search(row["cid"], '"tide"', 10)  # porter: "tides" -> "tide"
    assert hits[:, 0].tolist() == [1]
    assert s.lexical_search(row["cid"], '"yeast" OR "c5"', 10)[:, 0].tolist() in ([2, 3], [3, 2])
    s.close()
    again = Store(path)  # migrated once: the next open finds the current version
    assert again.migrated_from is None and again.lexical_search(row["cid"], '"moon"', 10)[:, 0].tolist() == [1]
    again.close()


def test_a_first_release_data_dir_opens_and_searches_every_way(tmp_path, embedder):
    """A whole data directory of the first release: its store migrates, its collection's index is rebuilt from the
    stored vectors (no snapshot of the current format), its old default index settings become tuned ones, and the
    three search modes answer."""
    data = tmp_path / "data"
    data.mkdir()
    write_v1_store(data / DB_FILE, DOCS, embedder.embed(list(DOCS.values())))
    with Collections(data, device="cpu") as colls:
        coll = colls.get("old")
        assert coll.restored_from == "store" and coll.stats()["chunk_count"] == 3
        assert coll.config.index.kind is None and coll.config.index.nbits is None  # the old defaults: tuned now
        assert coll.config.search_mode == "hybrid"
        for mode in ("dense", "lexical", "hybrid"):
            assert coll.search("what raises the tides?", k=1, mode=mode)[0].doc_id == "moon", mode
        assert coll.search("yeast", k=3, mode="lexical", filter={"n": 2})[0].doc_id == "bread"


def test_a_store_from_a_newer_release_is_refused(tmp_path):
    path = tmp_path / "new.sqlite3"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(FailedPreconditionError, match=f"schema version {SCHEMA_VERSION + 1}, from a newer pqrag"):
        Store(path)


def test_a_migration_that_fails_leaves_the_old_version(tmp_path, monkeypatch):
    import retrieval.schema as schema

    path = tmp_path / "old.sqlite3"
    write_v1_store(path, DOCS, np.zeros((3, D), np.float32))

    def broken(conn, cid):
        raise sqlite3.OperationalError("disk full (simulated)")

    monkeypatch.setattr(schema, "create_fts", broken)
    with pytest.raises(sqlite3.OperationalError, match="simulated"):
        Store(path)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == 1
    assert conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'chunks_fts_%'").fetchall() == []
    conn.close()
    monkeypatch.undo()
    assert Store(path).migrated_from == 1  # the next open migrates


def fts_ids(store, cid, word):
    return sorted(store.lexical_search(cid, f'"{word}"', 100)[:, 0].astype(int).tolist())


def test_the_full_text_index_follows_the_chunks(store):
    """Written in the chunks' transaction: replaced and deleted documents leave it, a rolled-back transaction leaves
    no trace, a dropped collection drops its table; FTS5's own integrity check passes throughout."""
    a, b = new_collection(store, "a"), new_collection(store, "b")
    ids_a, _, _ = put(store, a, "x", 3)  # texts "w0 w1 w2": chunk i holds "wi"
    put(store, b, "x", 2)
    assert fts_ids(store, a, "w1") == [int(ids_a[1])] and len(fts_ids(store, b, "w1")) == 1  # per collection
    ids_a2, _, _ = put(store, a, "x", 1, seed=1)  # replaced: one chunk, "w0"
    assert fts_ids(store, a, "w1") == [] and fts_ids(store, a, "w0") == [int(ids_a2[0])]
    with pytest.raises(RuntimeError):
        with store.write() as conn:
            store.delete_document(conn, a, "x")
            raise RuntimeError("crash before commit")
    assert fts_ids(store, a, "w0") == [int(ids_a2[0])]
    with store.write() as conn:
        store.delete_document(conn, a, "x")
        for cid in (a, b):
            conn.execute(f"INSERT INTO {fts_table(cid)} ({fts_table(cid)}) VALUES ('integrity-check')")
    assert fts_ids(store, a, "w0") == []
    with store.write() as conn:
        store.delete_collection(conn, b)
    with store.read() as conn:
        assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (fts_table(b),)).fetchone() is None


def test_lexical_search_filters_inside_the_query(store):
    cid = new_collection(store)
    for i in range(6):
        put(store, cid, f"d{i}", 2, metadata={"even": i % 2 == 0}, seed=i)
    where, params = "json_extract(d.metadata, '$.even') = 1", []
    rows = store.lexical_search(cid, '"w0" OR "w1"', 3, where, params)
    assert len(rows) == 3  # k hits although half the documents are filtered out
    docs = {r["doc_id"] for r in store.chunk_rows(cid, rows[:, 0].astype(int).tolist()).values()}
    assert docs <= {"d0", "d2", "d4"}
    assert (np.diff(rows[:, 1]) <= 1e-12).all()  # best first
