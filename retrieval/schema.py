"""The SQLite schema of the store (store.py runs every query; this module holds the tables and their versions).

Versions (meta "schema_version"):
  1  the first release: collections, documents, chunks (text + float16 vector), tombstones, meta.
  2  + one FTS5 full-text index per collection, chunks_fts_<cid>, over its chunk texts (lexical search).

`open_schema` creates the tables of a new file, or migrates an older one in place inside the caller's write
transaction, so a crash mid-migration leaves the old version intact (the next open migrates again). Migrating 1 -> 2
builds each collection's full-text index from its stored chunk texts. A file from a newer release is refused.
"""

from __future__ import annotations

import sqlite3

from common.errors import FailedPreconditionError

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS collections (
    cid INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: names the index directory
    name TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,                   -- CollectionConfig as JSON
    dimension INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    cid INTEGER NOT NULL,
    doc_id TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,                 -- JSON object; filters use json_extract on it
    source TEXT NOT NULL,
    chunk_count INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (cid, doc_id)
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,                 -- sequence number = id in the vector index
    cid INTEGER NOT NULL,
    doc_id TEXT NOT NULL,
    ord INTEGER NOT NULL,                   -- position in the document
    start_char INTEGER NOT NULL,
    end_char INTEGER NOT NULL,
    text TEXT NOT NULL,                     -- == document text[start_char:end_char]
    vector BLOB NOT NULL                    -- float16, dimension values
);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks (cid, doc_id, ord);
CREATE INDEX IF NOT EXISTS chunks_by_collection ON chunks (cid, id);
CREATE TABLE IF NOT EXISTS tombstones (
    seq INTEGER PRIMARY KEY,
    cid INTEGER NOT NULL,
    chunk_id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tombstones_by_collection ON tombstones (cid, seq);
INSERT OR IGNORE INTO meta (key, value) VALUES ('seq', 0);
"""
# The full-text index of one collection's chunks: external content (the text stays in `chunks` alone), so FTS5 keeps
# only its inverted index; rowid = chunk id. remove_diacritics 2: "café" matches "cafe" (unicode61's recommended
# mode). Every write names the table of the collection it touches (fts_table), never user text.
FTS_DDL = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS {table} USING fts5(text, content='chunks', content_rowid='id', "
    "tokenize='porter unicode61 remove_diacritics 2')"
)


def fts_table(cid: int) -> str:
    assert isinstance(cid, int), cid
    return f"chunks_fts_{cid}"


def create_fts(conn: sqlite3.Connection, cid: int) -> None:
    conn.execute(FTS_DDL.format(table=fts_table(cid)))


def statements(script: str) -> list[str]:
    """The SQL statements of a script (comments may hold ';'): executescript would commit the caller's transaction."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    assert not current.strip(), current
    return out


def open_schema(conn: sqlite3.Connection, path: str) -> int | None:
    """Bring the file behind `conn` (in a write transaction) to SCHEMA_VERSION. Returns the version it migrated from,
    None when the file was current or new; FailedPreconditionError for a file from a newer release."""
    fresh = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'collections'").fetchone() is None
    version = SCHEMA_VERSION
    if not fresh:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row is not None else 1
    if version > SCHEMA_VERSION:
        raise FailedPreconditionError(
            f"{path} has schema version {version}, from a newer pqrag than this one (which reads up to "
            f"{SCHEMA_VERSION}); upgrade pqrag to open it"
        )
    for statement in statements(SCHEMA):
        conn.execute(statement)
    if version < 2:
        for (cid,) in conn.execute("SELECT cid FROM collections").fetchall():
            create_fts(conn, int(cid))
            conn.execute(
                f"INSERT INTO {fts_table(int(cid))} (rowid, text) SELECT id, text FROM chunks WHERE cid = ?", (cid,)
            )
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
    return None if version == SCHEMA_VERSION else version
