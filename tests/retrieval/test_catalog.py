"""retrieval.catalog: the collections of a data directory (create, get, list, pages, delete, one owner) and reading a
collection's documents without owning the directory."""

import threading

import pytest

import retrieval
from common.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, PermissionDeniedError
from retrieval.catalog import MAX_PAGE_SIZE, Collections
from retrieval.chunker import ChunkerConfig
from retrieval.collection import CollectionConfig
from retrieval.types import Document
from retrieval.vector_index import IndexConfig


def test_document_texts_while_the_directory_is_owned(tmp_path):
    with Collections(tmp_path, device="cpu") as colls:  # holds the data dir's lock, as a server does
        notes = colls.create("notes")
        notes.ingest([{"id": "b", "text": "second text"}, {"id": "a", "text": "first text"}])
        colls.create("other").ingest([{"id": "z", "text": "not in notes"}])
        v1 = retrieval.collection_version(tmp_path, "notes")
        # whole documents in document-id order, from this collection only, through the package's public API
        assert list(retrieval.document_texts(tmp_path, "notes")) == ["first text", "second text"]
        notes.ingest([{"id": "c", "text": "third"}])
        assert retrieval.collection_version(tmp_path, "notes") != v1
        assert list(retrieval.document_texts(tmp_path, "notes"))[-1] == "third"


def test_missing_store_or_collection_fails_at_the_call(tmp_path):
    with pytest.raises(NotFoundError, match="no pqrag store"):
        retrieval.document_texts(tmp_path / "nowhere", "notes")  # not only when iterated
    with Collections(tmp_path, device="cpu") as colls:
        colls.create("notes")
    with pytest.raises(NotFoundError, match=r"collection 'nope' not found .* it has \['notes'\]"):
        retrieval.collection_version(tmp_path, "nope")


# --- manager ---------------------------------------------------------------------------------------


def test_create_get_list_delete(colls, tmp_path):
    a = colls.create("alpha")
    assert a.config.dimension == 384 and a.config.metric == "ip" and a.config.embedder is None
    colls.create("beta_2-x", CollectionConfig(chunker=ChunkerConfig(chunk_tokens=64, overlap_tokens=8)))
    assert [c.name for c in colls.list()] == ["alpha", "beta_2-x"]
    assert colls.get("alpha") is a
    st = a.stats()
    assert (st["document_count"], st["chunk_count"], st["index_state"], st["dimension"]) == (0, 0, "exact", 384)

    for bad in ["", "a b", "x" * 65, "ü", "a/b", None]:
        with pytest.raises(InvalidArgumentError, match="letters, digits"):
            colls.create(bad)
    with pytest.raises(AlreadyExistsError):
        colls.create("alpha")
    with pytest.raises(NotFoundError):
        colls.get("gamma")
    with pytest.raises(InvalidArgumentError, match="exceeds"):
        colls.create("big", CollectionConfig(chunker=ChunkerConfig(chunk_tokens=300, overlap_tokens=10)))
    with pytest.raises(InvalidArgumentError, match="dimension"):
        colls.create("dim", CollectionConfig(dimension=128))
    with pytest.raises(InvalidArgumentError, match="index"):
        colls.create("idx", CollectionConfig(index=IndexConfig(m=7)))  # 7 does not divide 384
    with pytest.raises(PermissionDeniedError, match="not one of this server's models"):
        colls.create("emb", CollectionConfig(embedder=str(tmp_path / "no-model")))  # a name, never a path
    with pytest.raises(InvalidArgumentError, match="collection name"):
        colls.get("x" * 10_000)
    assert colls.names() == ["alpha", "beta_2-x"]  # failed creates left nothing behind

    a.ingest([Document(id="d", text="some text")])
    index_dir = a.index_dir
    colls.delete("alpha")
    assert not index_dir.exists()
    with pytest.raises(NotFoundError):
        colls.get("alpha")
    with pytest.raises(NotFoundError):
        colls.delete("alpha")
    with pytest.raises(NotFoundError):
        a.search("text")  # a handle kept across the delete is dead
    again = colls.create("alpha")
    assert again.stats()["document_count"] == 0


def test_one_process_per_data_dir(colls, tmp_path):
    with pytest.raises(RuntimeError, match="in use"):
        Collections(tmp_path / "data")


def test_list_page(colls):
    for name in ["e", "a", "c", "b", "d"]:
        colls.create(name, CollectionConfig(index=IndexConfig(kind="flat")))
    page, token = colls.list_page(2)
    assert [c.name for c in page] == ["a", "b"] and token == "b"
    page, token = colls.list_page(2, token)
    assert [c.name for c in page] == ["c", "d"] and token == "d"
    colls.delete("c")  # deletions between pages skip nothing: the token is a name, not a position
    colls.delete("e")
    colls.create("dd")
    page, token = colls.list_page(2, token)
    assert [c.name for c in page] == ["dd"] and token == ""
    everything, token = colls.list_page()  # default page size: all of them, no next page
    assert [c.name for c in everything] == ["a", "b", "d", "dd"] and token == ""
    page, token = colls.list_page(4)  # exactly one page: no empty page after it
    assert len(page) == 4 and token == ""
    assert colls.list_page(3, "zzz") == ([], "")
    page, token = colls.list_page(MAX_PAGE_SIZE, "b")
    assert [c.name for c in page] == ["d", "dd"]
    for bad in (0, -1, MAX_PAGE_SIZE + 1, True, 2.5):
        with pytest.raises(InvalidArgumentError, match=f"page_size must be in 1..{MAX_PAGE_SIZE}"):
            colls.list_page(bad)
    with pytest.raises(InvalidArgumentError, match="page_token"):
        colls.list_page(2, 5)


def test_delete_waits_for_a_search_in_flight(colls, monkeypatch):
    coll = colls.create("busy", CollectionConfig(index=IndexConfig(kind="flat")))
    coll.ingest([Document(id="a", text="some text")])
    entered, release = threading.Event(), threading.Event()
    real_allowed = coll._store.allowed_ids

    def slow_allowed(*args):
        entered.set()
        release.wait(10)
        return real_allowed(*args)

    monkeypatch.setattr(coll._store, "allowed_ids", slow_allowed)
    results = []
    t = threading.Thread(target=lambda: results.append(coll.search("text", k=1, filter={"x": 1})))
    t.start()
    assert entered.wait(10)  # the search holds the collection's lock
    deleter = threading.Thread(target=colls.delete, args=("busy",))
    deleter.start()
    deleter.join(0.3)
    assert deleter.is_alive()  # the delete waits for it
    release.set()
    t.join(10)
    deleter.join(10)
    assert results == [[]] and "busy" not in colls
    with pytest.raises(NotFoundError, match="deleted or closed"):
        coll.get_document("a")


def test_a_collections_default_grounding_is_checked_and_kept(tmp_path, embedder):
    colls = Collections(tmp_path / "data", device="cpu")
    try:
        assert colls.create("plain").config.grounding is None  # the server's default then
        assert colls.create("quoted", CollectionConfig(grounding="quote")).config.grounding == "quote"
        assert colls.create("extracted", CollectionConfig(grounding="extract")).config.grounding == "extract"
        with pytest.raises(InvalidArgumentError, match="grounding must be free, quote or extract"):
            colls.create("bad", CollectionConfig(grounding="strict"))
    finally:
        colls.close()
    with Collections(tmp_path / "data", device="cpu") as again:  # stored with the collection
        assert again.get("quoted").config.grounding == "quote" and again.get("plain").config.grounding is None
        assert again.get("extracted").config.grounding == "extract"


def test_a_collections_reader_threshold_is_checked_and_kept(tmp_path, embedder):
    colls = Collections(tmp_path / "data", device="cpu")
    try:
        assert colls.create("plain").config.reader_threshold is None  # the reader's own null_threshold then
        assert colls.create("low", CollectionConfig(reader_threshold=-2.5)).config.reader_threshold == -2.5
        edge = colls.create("edge", CollectionConfig(reader_threshold=100)).config.reader_threshold
        assert edge == 100.0 and isinstance(edge, float)
        for bad in (float("nan"), float("inf"), -float("inf"), True, "1.5", 100.5, -101, 10**400):
            with pytest.raises(
                InvalidArgumentError, match=r"reader_threshold must be a finite number in \[-100, 100\]"
            ):
                colls.create("bad", CollectionConfig(reader_threshold=bad))
        assert "bad" not in colls  # nothing was created
    finally:
        colls.close()
    with Collections(tmp_path / "data", device="cpu") as again:  # stored with the collection
        assert again.get("low").config.reader_threshold == -2.5 and again.get("plain").config.reader_threshold is None
        assert again.get("edge").config.reader_threshold == 100.0
