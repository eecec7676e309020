"""Collections over a real gRPC channel: create, get, paged list, update (field masks), delete, and their errors."""

from __future__ import annotations

import math
import threading
import time

import grpc
import numpy as np
import pytest

from pqrag.v1 import collections_pb2, search_pb2
from tests.service.conftest import DOCS, code_of, ingest_all


def test_collections_crud_and_errors(client):
    created = client.create_collection("notes")
    assert created.name == "notes" and created.dimension == 384 and created.index_state == "exact"
    client.create_collection("alpha")
    client.create_collection("zeta")

    with pytest.raises(grpc.RpcError) as e:
        client.create_collection("notes")
    assert code_of(e) == grpc.StatusCode.ALREADY_EXISTS and "notes" in e.value.details()
    for bad in ("", "has space", "x" * 65, "semi;colon"):
        with pytest.raises(grpc.RpcError) as e:
            client.create_collection(bad)
        assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT, bad
    with pytest.raises(grpc.RpcError) as e:
        client.create_collection("badm", m=7)  # 7 does not divide 384
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT and "384" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        client.get_collection("missing")
    assert code_of(e) == grpc.StatusCode.NOT_FOUND and "missing" in e.value.details()

    assert client.get_collection("notes").name == "notes"
    # Pagination walks every collection exactly once, in name order.
    names, token = [], ""
    while True:
        page = client.collections.ListCollections(collections_pb2.ListCollectionsRequest(page_size=1, page_token=token))
        assert len(page.collections) <= 1
        names += [c.name for c in page.collections]
        token = page.next_page_token
        if not token:
            break
    assert names == ["alpha", "notes", "zeta"]

    client.delete_collection("alpha")
    with pytest.raises(grpc.RpcError) as e:
        client.get_collection("alpha")
    assert code_of(e) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        client.delete_collection("alpha")
    assert code_of(e) == grpc.StatusCode.NOT_FOUND
    assert [c.name for c in client.list_collections()] == ["notes", "zeta"]


def test_list_collections_pages_through_the_rpc(client):
    def page(size=0, token=""):
        resp = client.collections.ListCollections(
            collections_pb2.ListCollectionsRequest(page_size=size, page_token=token)
        )
        return [c.name for c in resp.collections], resp.next_page_token

    for name in ("e", "c", "a", "d", "b"):
        client.create_collection(name)
    assert page() == (["a", "b", "c", "d", "e"], "")  # unset page_size: the domain's default page (1000)
    first, token = page(2)
    assert first == ["a", "b"] and token
    client.delete_collection("b")  # changes between pages skip nothing: the token is a position by name
    client.create_collection("bb")
    second, token = page(2, token)
    assert second == ["bb", "c"]
    assert page(2, token) == (["d", "e"], "")  # the last page has no next token
    assert page(5, "e") == ([], "")
    assert page(1000)[0] == ["a", "bb", "c", "d", "e"]
    with pytest.raises(grpc.RpcError) as e:
        page(1001)
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in e.value.details()


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"kind": "hnsw"}, "hnsw"),
        ({"metric": "cosine"}, "cosine"),
        ({"nbits": 9}, "nbits"),
        ({"backend": "tpu"}, "tpu"),
        ({"chunk_tokens": 8, "overlap_tokens": 8}, "overlap"),
    ],
)
def test_bad_index_and_chunking_specs_are_the_callers_mistake(client, spec, message):
    with pytest.raises(grpc.RpcError) as e:
        client.create_collection("bad", **spec)
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details()
    assert client.list_collections() == []


def test_a_collections_reader_threshold_and_min_similarity_over_grpc(client):
    created = client.create_collection("calibrated", grounding="extract", reader_threshold=-1.75, min_similarity=0.3)
    assert created.HasField("reader_threshold") and created.reader_threshold == -1.75
    assert created.HasField("min_similarity") and created.min_similarity == 0.3
    zero = client.create_collection("zero", reader_threshold=0.0, min_similarity=0.0)  # set to 0.0, not left unset
    assert zero.HasField("reader_threshold") and zero.reader_threshold == 0.0
    assert zero.HasField("min_similarity") and zero.min_similarity == 0.0
    plain = client.create_collection("plain")
    assert not plain.HasField("reader_threshold")  # unset stays unset: the reader's own null_threshold
    assert not plain.HasField("min_similarity")  # likewise: no cut
    got = {c.name: c for c in client.list_collections()}
    assert got["calibrated"].reader_threshold == -1.75 and not got["plain"].HasField("reader_threshold")
    assert got["calibrated"].min_similarity == 0.3 and not got["plain"].HasField("min_similarity")
    assert client.get_collection("zero").HasField("reader_threshold")
    assert client.get_collection("zero").HasField("min_similarity")
    for bad, shown in ((math.nan, "nan"), (math.inf, "inf"), (-250.0, "-250")):
        with pytest.raises(grpc.RpcError) as e:
            client.create_collection("bad", reader_threshold=bad)
        assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
        assert (
            "reader_threshold must be a finite number in [-100, 100]" in e.value.details()
            and shown in e.value.details()
        )
    for bad, shown in ((math.nan, "nan"), (-math.inf, "-inf"), (2e6, "2000000")):
        with pytest.raises(grpc.RpcError) as e:
            client.create_collection("bad", min_similarity=bad)
        assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
        assert "min_similarity must be a finite number in [-1000000, 1000000]" in e.value.details()
        assert shown in e.value.details()
    # the server keeps serving, and nothing was created
    assert [c.name for c in client.list_collections()] == ["calibrated", "plain", "zero"]
    assert client.get_collection("calibrated").reader_threshold == -1.75


# --- UpdateCollection (AIP-134: a field mask) -------------------------------------------------------------------


def update(client, collection: collections_pb2.Collection, *paths: str) -> collections_pb2.Collection:
    """UpdateCollection with exactly this mask (none: no mask at all)."""
    request = collections_pb2.UpdateCollectionRequest(collection=collection)
    if paths:
        request.update_mask.paths.extend(paths)
    return client.collections.UpdateCollection(request, timeout=60)


def test_update_collection_changes_each_setting_and_keeps_the_rest(client):
    client.create_collection("kb", kind="flat", chunk_tokens=64, grounding="quote", reader_threshold=-2.0)
    ingest_all(client, "kb", DOCS)
    got = client.update_collection("kb", reader_threshold=1.25)
    assert got.reader_threshold == 1.25 and got.default_grounding == collections_pb2.GROUNDING_QUOTE
    got = client.update_collection("kb", search_mode="lexical")
    assert got.default_search_mode == search_pb2.SEARCH_MODE_LEXICAL and got.reader_threshold == 1.25
    got = client.update_collection("kb", grounding="extract")
    assert got.default_grounding == collections_pb2.GROUNDING_EXTRACT
    assert (got.index.kind, got.chunking.chunk_tokens, got.document_count) == ("flat", 64, len(DOCS))
    assert client.get_collection("kb") == got  # what GetCollection reads from now on
    hits = client.search("kb", "sourdough starter", k=1)  # the new default mode: lexical ranks only
    assert hits[0]["doc_id"] == "bread" and hits[0]["dense_rank"] is None
    got = client.update_collection("kb", reader_threshold=0.0)  # 0.0 is a value, not unset
    assert got.HasField("reader_threshold") and got.reader_threshold == 0.0
    got = client.update_collection("kb", min_similarity=0.0)  # likewise
    assert got.HasField("min_similarity") and got.min_similarity == 0.0 and got.reader_threshold == 0.0
    got = client.update_collection("kb", min_similarity=-0.25)
    assert got.min_similarity == -0.25 and client.get_collection("kb").min_similarity == -0.25
    got = client.update_collection("kb", clear=["reader_threshold", "grounding", "search_mode", "min_similarity"])
    assert not got.HasField("reader_threshold") and got.default_grounding == collections_pb2.GROUNDING_UNSPECIFIED
    assert not got.HasField("min_similarity")  # back to no cut
    assert got.default_search_mode == search_pb2.SEARCH_MODE_HYBRID  # a cleared search mode is the default
    assert client.update_collection("kb") == client.get_collection("kb")  # nothing given: nothing changes


def test_update_mask_semantics(client):
    created = client.create_collection("kb", grounding="extract", reader_threshold=-1.5, search_mode="dense")
    # A path whose field is unset puts it back to its default; fields outside the mask are ignored.
    got = update(
        client, collections_pb2.Collection(name="kb", embedder="other", reader_threshold=3.0), "reader_threshold"
    )
    assert got.reader_threshold == 3.0 and got.embedder == created.embedder
    got = update(client, collections_pb2.Collection(name="kb"), "default_grounding", "reader_threshold")
    assert got.default_grounding == collections_pb2.GROUNDING_UNSPECIFIED and not got.HasField("reader_threshold")
    assert got.default_search_mode == search_pb2.SEARCH_MODE_DENSE
    got = update(client, collections_pb2.Collection(name="kb"), "default_search_mode")
    assert got.default_search_mode == search_pb2.SEARCH_MODE_HYBRID
    got = update(
        client, collections_pb2.Collection(name="kb", min_similarity=0.5, reader_threshold=9.0), "min_similarity"
    )
    assert got.min_similarity == 0.5 and not got.HasField("reader_threshold")  # only the mask's field
    got = update(client, collections_pb2.Collection(name="kb"), "min_similarity")  # unset in the mask: no cut
    assert not got.HasField("min_similarity")
    # No mask: the updatable fields populated change, output-only ones are ignored, and the fixed fields may be sent
    # back as GetCollection gave them (read, change, write).
    current = client.get_collection("kb")
    current.default_grounding = collections_pb2.GROUNDING_QUOTE
    current.reader_threshold = -0.5
    current.min_similarity = 0.125
    current.document_count = 999
    got = update(client, current)
    assert (got.default_grounding, got.reader_threshold, got.min_similarity, got.document_count) == (
        collections_pb2.GROUNDING_QUOTE,
        -0.5,
        0.125,
        0,
    )
    got = update(client, collections_pb2.Collection(name="kb", default_search_mode=search_pb2.SEARCH_MODE_LEXICAL))
    assert got.default_search_mode == search_pb2.SEARCH_MODE_LEXICAL and got.reader_threshold == -0.5  # rest kept

    def refused(code, collection, *paths):
        with pytest.raises(grpc.RpcError) as e:
            update(client, collection, *paths)
        assert code_of(e) == code, e.value.details()
        return e.value.details()

    bad = grpc.StatusCode.INVALID_ARGUMENT
    for path in ("embedder", "index", "chunking", "name", "document_count", "index.kind", "reader_treshold"):
        details = refused(bad, collections_pb2.Collection(name="kb"), "reader_threshold", path)
        assert path in details and "default_search_mode, default_grounding, reader_threshold, min_similarity" in details
    details = refused(bad, collections_pb2.Collection(name="kb", embedder="other"))  # no mask: a fixed field changed
    assert "embedder cannot be updated" in details and "new collection" in details
    changed = client.get_collection("kb")
    changed.index.kind = "pq"
    assert "index cannot be updated" in refused(bad, changed)
    details = refused(bad, collections_pb2.Collection(name="kb", reader_threshold=math.nan), "reader_threshold")
    assert "reader_threshold must be a finite number in [-100, 100]" in details
    for value in (math.nan, math.inf, -1e7):
        details = refused(bad, collections_pb2.Collection(name="kb", min_similarity=value), "min_similarity")
        assert "min_similarity must be a finite number in [-1000000, 1000000]" in details
    assert "min_similarity must be" in refused(bad, collections_pb2.Collection(name="kb", min_similarity=math.nan))
    assert "SearchMode 9" in refused(bad, collections_pb2.Collection(name="kb", default_search_mode=9))
    assert "name is required" in refused(bad, collections_pb2.Collection(reader_threshold=1.0), "reader_threshold")
    details = refused(grpc.StatusCode.NOT_FOUND, collections_pb2.Collection(name="nope", reader_threshold=1.0))
    assert "'nope' not found" in details
    # nothing of the refused updates was applied, and the server keeps serving
    after = client.get_collection("kb")
    assert (after.reader_threshold, after.default_search_mode) == (-0.5, search_pb2.SEARCH_MODE_LEXICAL)
    assert after.min_similarity == 0.125
    assert client.health() == "SERVING" and [c.name for c in client.list_collections()] == ["kb"]
    with pytest.raises(ValueError, match="cannot clear 'embedder'"):
        client.update_collection("kb", clear=["embedder"])


# --- the self-tuning index, through the real server ------------------------------------------------------------

WORDS = "amber basalt cedar delta ember fjord garnet harbor island jasper kelp lagoon meadow nectar orchid".split()


def record(i: int) -> dict:
    """A short distinct document: one chunk each."""
    rng = np.random.default_rng(i)
    return {"id": f"r{i}", "text": f"Record {i} mentions {' and '.join(rng.choice(WORDS, 3, replace=False))}."}


def wait_trained(client, name, vectors, timeout=180.0):
    """GetCollection until the index has trained on at least `vectors` vectors and no training runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = client.get_collection(name)
        if not c.index_training and c.HasField("tuning") and c.tuning.trained_vectors >= vectors:
            return c
        time.sleep(0.1)
    raise AssertionError(f"{name}: no training on {vectors} vectors within {timeout} s")


def test_a_small_collection_trains_and_reports_its_tuning(client):
    created = client.create_collection("small", min_train_size=100, recall_target=0.9)
    assert created.index.min_train_size == 100 and created.index.recall_target == pytest.approx(0.9)
    assert created.index.kind == "" and created.index.nbits == 0  # chosen by measurement
    assert not created.HasField("tuning") and created.index_state == "exact"
    ingest_all(client, "small", [record(i) for i in range(120)])
    c = wait_trained(client, "small", 100)
    t = c.tuning
    assert c.index_state == "trained" and t.met_target and t.recall - t.recall_stderr >= 0.9
    assert t.params.kind in ("pq", "ivfpq") and t.params.m in (24, 48, 96) and t.params.nbits in (4, 6)
    assert t.params.rerank_factor >= 1 and 0 < t.bytes_per_vector < 2 * 384 and t.queries >= 32
    assert t.settings_trained >= 1 and t.train_seconds > 0
    for i in (3, 77, 119):  # served by PQ + re-ranking now
        assert client.search("small", record(i)["text"], k=1, mode="dense")[0]["doc_id"] == f"r{i}"
    spec = {"kind": "pq", "nbits": 4, "m": 48, "rerank_factor": 4, "min_train_size": 200, "recall_target": 0.9}
    client.create_collection("pinned", **spec)
    ingest_all(client, "pinned", [record(i) for i in range(200)])
    p = wait_trained(client, "pinned", 200).tuning.params
    assert (p.kind, p.m, p.nbits, p.rerank_factor) == ("pq", 48, 4, 4)  # pinned values are kept
    for bad in ({"recall_target": 1.5}, {"recall_target": 0.0}, {"rerank_factor": 0, "nbits": 9}):
        with pytest.raises(grpc.RpcError) as e:
            client.create_collection("bad", **bad)
        assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT


def test_retraining_runs_in_the_background_while_searches_go_on(client, monkeypatch):
    """Each training blocks (a stand-in for minutes of k-means) until the test has searched and ingested: both are
    answered meanwhile, by the index as it was; the new one is installed after, with the vectors that arrived."""
    import retrieval.vector_index as vector_index

    gate, entered = threading.Semaphore(0), threading.Semaphore(0)
    real_tune = vector_index.tune

    def held_tune(x, ids, config, **kwargs):
        entered.release()
        assert gate.acquire(timeout=120)
        return real_tune(x, ids, config, **kwargs)

    monkeypatch.setattr(vector_index, "tune", held_tune)
    client.create_collection("bg", min_train_size=160)
    ingest_all(client, "bg", [record(i) for i in range(160)])
    assert entered.acquire(timeout=60)  # the first training started, and waits
    c = client.get_collection("bg")
    assert c.index_training and c.index_state == "exact"
    assert client.search("bg", record(5)["text"], k=1, mode="dense")[0]["doc_id"] == "r5"
    ingest_all(client, "bg", [record(i) for i in range(160, 200)])  # writes commit too
    gate.release()
    c = wait_trained(client, "bg", 160)
    assert c.index_state == "trained" and c.tuning.trained_vectors == 160 and c.chunk_count == 200
    assert client.search("bg", record(190)["text"], k=1, mode="dense")[0]["doc_id"] == "r190"  # added meanwhile

    ingest_all(client, "bg", [record(i) for i in range(200, 640)])  # 640 = 4 x 160: a retraining starts
    assert entered.acquire(timeout=60)
    assert client.get_collection("bg").index_training
    for i in (7, 500):  # the old trained index answers while the new one is tuned
        assert client.search("bg", record(i)["text"], k=1, mode="dense")[0]["doc_id"] == f"r{i}"
    gate.release()
    c = wait_trained(client, "bg", 640)
    assert c.tuning.trained_vectors == 640 and c.index_state == "trained" and not c.index_training
