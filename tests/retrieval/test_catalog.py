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


def test_a_collections_min_similarity_is_checked_and_kept(tmp_path, embedder):
    colls = Collections(tmp_path / "data", device="cpu")
    try:
        assert colls.create("plain").config.min_similarity is None  # no cut then
        assert colls.create("cut", CollectionConfig(min_similarity=0.35)).config.min_similarity == 0.35
        edge = colls.create("edge", CollectionConfig(min_similarity=-(10**6))).config.min_similarity  # -squared L2
        assert edge == -1e6 and isinstance(edge, float)
        for bad in (float("nan"), float("inf"), -float("inf"), True, "0.5", 1e6 + 1, -2e6, 10**400):
            with pytest.raises(
                InvalidArgumentError, match=r"min_similarity must be a finite number in \[-1000000, 1000000\]"
            ):
                colls.create("bad", CollectionConfig(min_similarity=bad))
        assert "bad" not in colls  # nothing was created
    finally:
        colls.close()
    with Collections(tmp_path / "data", device="cpu") as again:  # stored with the collection
        assert again.get("cut").config.min_similarity == 0.35 and again.get("plain").config.min_similarity is None
        assert again.get("edge").config.min_similarity == -1e6


# --- update: the settings that leave the stored vectors as they are ---------------------------------------------


def test_update_changes_the_given_settings_and_survives_reopening(tmp_path, embedder):
    with Collections(tmp_path / "data", device="cpu") as colls:
        coll = colls.create("kb", CollectionConfig(grounding="quote", reader_threshold=-2.0, index=IndexConfig(m=8)))
        coll.ingest([{"id": "a", "text": "sourdough bread rises with wild yeast"}])
        old = coll.config
        assert colls.update("kb", reader_threshold=1.5) is coll
        assert coll.config is not old and old.reader_threshold == -2.0  # a new config swapped in, the old one kept
        assert (coll.config.search_mode, coll.config.grounding, coll.config.reader_threshold) == (
            "hybrid",
            "quote",
            1.5,
        )
        assert coll.config.index == old.index and coll.config.embedder == old.embedder  # the rest as it was
        colls.update("kb", search_mode="lexical", grounding="extract")
        assert coll.search(query="bread").hits[0].doc_id == "a"  # the collection serves on, by its new default
        assert (coll.config.search_mode, coll.config.grounding, coll.config.reader_threshold) == (
            "lexical",
            "extract",
            1.5,
        )
        colls.update("kb", reader_threshold=7)  # an int is a float, as at create
        assert colls.get("kb").config.reader_threshold == 7.0 and isinstance(coll.config.reader_threshold, float)
        assert coll.config.min_similarity is None  # not given at create: no cut
        colls.update("kb", min_similarity=0)  # 0 is a value, not unset; an int is a float
        assert coll.config.min_similarity == 0.0 and isinstance(coll.config.min_similarity, float)
        colls.update("kb", min_similarity=0.4)
        assert (coll.config.reader_threshold, coll.config.min_similarity) == (7.0, 0.4)  # each on its own
        assert colls.update("kb") is coll and coll.config.reader_threshold == 7.0  # nothing given: nothing changes
    with Collections(tmp_path / "data", device="cpu") as again:  # stored: the next server opens it so
        cfg = again.get("kb").config
        assert (cfg.search_mode, cfg.grounding, cfg.reader_threshold, cfg.index.m) == ("lexical", "extract", 7.0, 8)
        assert cfg.min_similarity == 0.4
        again.update("kb", search_mode=None, grounding=None, reader_threshold=None, min_similarity=None)  # defaults
        cfg = again.get("kb").config
        assert (cfg.search_mode, cfg.grounding, cfg.reader_threshold, cfg.min_similarity) == (
            "hybrid",
            None,
            None,
            None,
        )
    with Collections(tmp_path / "data", device="cpu") as third:
        cfg = third.get("kb").config
        assert (cfg.search_mode, cfg.grounding, cfg.reader_threshold, cfg.min_similarity) == (
            "hybrid",
            None,
            None,
            None,
        )
        assert third.get("kb").stats()["document_count"] == 1


def test_update_checks_as_create_does_and_refuses_the_fixed_settings(colls):
    coll = colls.create("kb", CollectionConfig(reader_threshold=-1.0, min_similarity=0.25))
    for bad, says in (
        ({"search_mode": "fuzzy"}, "search_mode must be one of dense, lexical, hybrid"),
        ({"grounding": "strict"}, "grounding must be free, quote or extract"),
        ({"reader_threshold": float("nan")}, r"reader_threshold must be a finite number in \[-100, 100\]"),
        ({"reader_threshold": True}, "reader_threshold must be a finite number"),
        ({"reader_threshold": 100.5}, "reader_threshold must be a finite number"),
        ({"reader_threshold": 2.0, "grounding": "strict"}, "grounding"),  # all or nothing
        ({"min_similarity": float("-inf")}, r"min_similarity must be a finite number in \[-1000000, 1000000\]"),
        ({"min_similarity": False}, "min_similarity must be a finite number"),
        ({"min_similarity": "0.5"}, "min_similarity must be a finite number"),
        ({"min_similarity": 2e6}, "min_similarity must be a finite number"),
        ({"min_similarity": 0.5, "reader_threshold": 250}, "reader_threshold"),  # all or nothing
    ):
        with pytest.raises(InvalidArgumentError, match=says):
            colls.update("kb", **bad)
    for fixed in ("embedder", "dimension", "index", "chunker", "name"):
        with pytest.raises(InvalidArgumentError, match=f"cannot update '{fixed}'") as e:
            colls.update("kb", **{fixed: None})
        assert "updatable settings are search_mode, grounding, reader_threshold, min_similarity" in str(e.value)
        assert "new collection" in str(e.value)
    assert coll.config.reader_threshold == -1.0 and coll.config.search_mode == "hybrid"  # nothing changed
    assert coll.config.min_similarity == 0.25
    with pytest.raises(NotFoundError, match="collection 'nope' not found"):
        colls.update("nope", reader_threshold=1.0)
    with pytest.raises(InvalidArgumentError):
        colls.update("bad/name", reader_threshold=1.0)


def test_update_changes_nothing_when_the_store_refuses_it(colls, monkeypatch):
    coll = colls.create("kb", CollectionConfig(reader_threshold=-1.0))

    def broken(conn, cid, config):
        raise OSError("disk full")

    monkeypatch.setattr(colls._store, "update_collection_config", broken)
    with pytest.raises(OSError, match="disk full"):
        colls.update("kb", reader_threshold=3.0)
    assert coll.config.reader_threshold == -1.0  # the live config is swapped only after the commit


def test_readers_see_the_old_config_or_the_new_never_a_mix(colls):
    coll = colls.create("kb")
    pairs = [("quote", 1.0), ("extract", -2.0)]
    seen: set[tuple] = set()
    done = threading.Event()

    def read():
        while not done.is_set():
            cfg = coll.config
            seen.add((cfg.grounding, cfg.reader_threshold))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(200):
            grounding, threshold = pairs[i % 2]
            colls.update("kb", grounding=grounding, reader_threshold=threshold)
    finally:
        done.set()
        reader.join()
    assert seen <= {(None, None), *pairs}
