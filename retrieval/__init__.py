"""Retrieval: documents chunked, embedded, stored in SQLite and searched through a product-quantized index.

The public API is what this package root exports (other packages import only these names):

    from retrieval import Collections, CollectionConfig, Document
    with Collections("data") as colls:
        colls.create("notes").ingest([Document(id=None, text="...")])

Names resolve lazily, on first access, so `import retrieval` stays cheap (no torch, faiss or sentence-transformers
until a name that needs them is used).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    # the data directory and its collections
    "Collections": "retrieval.catalog",
    "MAX_PAGE_SIZE": "retrieval.catalog",
    "Collection": "retrieval.collection",
    "CollectionConfig": "retrieval.collection",
    "IndexConfig": "retrieval.index_config",
    "IndexParams": "retrieval.index_config",
    "ChunkerConfig": "retrieval.chunker",
    # what goes in and comes back (SearchParams.k: the one default of a search's k)
    "Document": "retrieval.types",
    "SearchParams": "retrieval.types",
    "Hit": "retrieval.types",
    "SearchResult": "retrieval.types",
    "StoredDocument": "retrieval.types",
    "StoredChunk": "retrieval.types",
    "IngestResult": "retrieval.types",
    # search modes and hybrid fusion (SEARCH_MODES; FusionParams holds the fusion defaults; the checks of both)
    "SEARCH_MODES": "retrieval.fusion",
    "FusionParams": "retrieval.fusion",
    "check_mode": "retrieval.fusion",
    "check_fusion": "retrieval.fusion",
    # reading a collection without owning its data directory (the trainer)
    "document_texts": "retrieval.catalog",
    "collection_version": "retrieval.catalog",
    # files -> documents, as `pqrag ingest` reads them
    "iter_files": "retrieval.loaders",
    "load_file": "retrieval.loaders",
    "json_records": "retrieval.loaders",
    "record_to_document": "retrieval.loaders",
    "relative_name": "retrieval.loaders",
    "JSON_TYPES": "retrieval.loaders",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
