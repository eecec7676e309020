"""The server over a real gRPC channel: collections, ingestion, search, bad input, restarts."""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from service.server import SERVICE_NAMES
from tests.service.conftest import ServerThread

DOCS = [
    {
        "id": "volcano",
        "text": "Volcanoes erupt when magma rises through the crust; lava flows and ash clouds follow.",
        "metadata": {"topic": "geology", "lang": "en"},
        "source": "geo.txt",
    },
    {
        "id": "bread",
        "text": "Sourdough bread rises thanks to wild yeast in the starter; bake it in a hot Dutch oven.",
        "metadata": {"topic": "cooking", "lang": "en"},
        "source": "bread.md",
    },
    {
        "id": "chess",
        "text": "The Sicilian Defence answers 1.e4 with c5 and leads to sharp chess positions.",
        "metadata": {"topic": "games", "lang": "en"},
        "source": "chess.html",
    },
    {
        "id": "pain",
        "text": "Le pain au levain lève grâce aux levures sauvages; on le cuit dans une cocotte très chaude.",
        "metadata": {"topic": "cooking", "lang": "fr"},
        "source": "pain.md",
    },
]


def code_of(excinfo) -> grpc.StatusCode:
    return excinfo.value.code()


def ingest_all(client, name, docs):
    return list(client.ingest(name, docs))


def test_health_and_reflection(server, client):
    assert client.health() == "SERVING"
    for name in SERVICE_NAMES:
        assert client.health(name) == "SERVING"
    with pytest.raises(grpc.RpcError) as e:
        client.health("no.such.Service")
    assert code_of(e) == grpc.StatusCode.NOT_FOUND

    db = ProtoReflectionDescriptorDatabase(client.channel)
    services = set(db.get_services())
    assert set(SERVICE_NAMES) <= services
    assert "grpc.health.v1.Health" in services
    search = db.FindFileContainingSymbol("pqrag.v1.Search")
    assert search.package == "pqrag.v1"


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
    from pqrag.v1 import collections_pb2

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


def test_ingest_search_get_delete(client):
    client.create_collection("kb")
    acks = ingest_all(client, "kb", DOCS)
    assert [a.document_id for a in acks] == [d["id"] for d in DOCS]
    assert [a.index for a in acks] == list(range(len(DOCS)))
    assert all(a.chunk_count >= 1 and not a.replaced for a in acks)

    hits = client.search("kb", "what comes out of an erupting mountain?", k=2)
    assert hits[0]["doc_id"] == "volcano"
    assert hits[0]["score"] >= hits[1]["score"]
    assert hits[0]["metadata"] == {"topic": "geology", "lang": "en"} and hits[0]["source"] == "geo.txt"
    # Character spans cite the document exactly.
    doc = client.get_document("kb", "volcano", include_chunks=True)
    assert doc.chunk_count == len(doc.chunks) >= 1
    assert doc.text[hits[0]["start"] : hits[0]["end"]] == hits[0]["text"]
    for ch in doc.chunks:
        assert doc.text[ch.start : ch.end] == ch.text

    info = client.get_collection("kb")
    assert info.document_count == len(DOCS) and info.chunk_count == sum(a.chunk_count for a in acks)

    # Upsert replaces the old chunks.
    new = {"id": "chess", "text": "Go is played with black and white stones on a 19 by 19 grid.", "source": "go.txt"}
    (ack,) = ingest_all(client, "kb", [new])
    assert ack.replaced
    top = client.search("kb", "stones on a grid board game", k=1)[0]
    assert top["doc_id"] == "chess" and "stones" in top["text"]
    assert all("Sicilian" not in h["text"] for h in client.search("kb", "Sicilian Defence chess opening", k=10))
    assert client.get_collection("kb").document_count == len(DOCS)

    client.delete_document("kb", "volcano")
    with pytest.raises(grpc.RpcError) as e:
        client.get_document("kb", "volcano")
    assert code_of(e) == grpc.StatusCode.NOT_FOUND
    assert all(h["doc_id"] != "volcano" for h in client.search("kb", "volcano lava eruption", k=10))
    with pytest.raises(grpc.RpcError) as e:
        client.delete_document("kb", "volcano")
    assert code_of(e) == grpc.StatusCode.NOT_FOUND


def test_ingest_summary(client):
    client.create_collection("kb")
    summary = client.ingest_summary("kb", DOCS[:2])
    assert summary.collection == "kb" and summary.document_count == 2
    assert list(summary.document_ids) == ["volcano", "bread"]
    # Documents without an id get one.
    summary = client.ingest_summary("kb", [{"text": "An unnamed note about tides and the moon."}])
    (new_id,) = summary.document_ids
    assert new_id and client.get_document("kb", new_id).text.startswith("An unnamed note")


def test_filters(client):
    client.create_collection("kb")
    ingest_all(client, "kb", DOCS)
    hits = client.search("kb", "bread", k=10, filter={"lang": "fr"})
    assert [h["doc_id"] for h in hits] == ["pain"]
    hits = client.search("kb", "bread", k=10, filter={"topic": {"$in": ["geology", "games"]}})
    assert {h["doc_id"] for h in hits} == {"volcano", "chess"}
    # The filter is applied inside the search: k matching results come back even if they rank low.
    hits = client.search("kb", "volcano lava", k=2, filter={"topic": {"$eq": "cooking"}})
    assert {h["doc_id"] for h in hits} == {"bread", "pain"}
    with pytest.raises(grpc.RpcError) as e:
        client.search("kb", "bread", filter={"year": {"$gt": 3}})
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT and "$gt" in e.value.details()


def test_bad_input_changes_nothing(server, client):
    client.create_collection("kb")
    ingest_all(client, "kb", DOCS)
    before = client.get_collection("kb")
    expect = {
        grpc.StatusCode.INVALID_ARGUMENT: [
            lambda: client.search("kb", ""),
            lambda: client.search("kb", "   "),
            lambda: client.search("kb", "bread", k=0),
            lambda: client.search("kb", "bread", k=1001),
            lambda: client.search_raw("kb", vector=[0.1] * 17),
            lambda: client.search_raw("kb"),  # no query at all
            lambda: client.search("", "bread"),
            lambda: ingest_all(client, "kb", [{"id": "empty", "text": ""}]),
            lambda: ingest_all(client, "kb", [{"id": "blank", "text": " \n\t "}]),
            lambda: client.ingest_summary("", DOCS[:1]),
            lambda: client.get_document("kb", ""),
        ],
        grpc.StatusCode.NOT_FOUND: [
            lambda: client.search("nope", "bread"),
            lambda: ingest_all(client, "nope", DOCS[:1]),
            lambda: client.get_document("nope", "bread"),
            lambda: client.get_document("kb", "no-such-doc"),
        ],
        grpc.StatusCode.RESOURCE_EXHAUSTED: [
            # Larger than the server's 16 MiB receive limit.
            lambda: ingest_all(client, "kb", [{"id": "huge", "text": "x" * (17 * 1024 * 1024)}]),
        ],
    }
    for code, calls in expect.items():
        for call in calls:
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert code_of(e) == code, e.value.details()
            assert e.value.details(), "every error says what to fix"

    # A query vector of the right dimension works, and the server kept serving with nothing changed.
    vec = [0.0] * before.dimension
    vec[0] = 1.0
    assert len(client.search_raw("kb", vector=vec, k=3).hits) == 3
    after = client.get_collection("kb")
    assert (after.document_count, after.chunk_count) == (before.document_count, before.chunk_count)
    with pytest.raises(grpc.RpcError):
        client.get_document("kb", "empty")
    assert client.health() == "SERVING"


def test_mixed_collections_in_one_stream_rejected(client):
    from pqrag.v1 import documents_pb2

    client.create_collection("a")
    client.create_collection("b")
    reqs = [
        documents_pb2.IngestRequest(collection="a", document=documents_pb2.Document(id="1", text="one")),
        documents_pb2.IngestRequest(collection="b", document=documents_pb2.Document(id="2", text="two")),
    ]
    with pytest.raises(grpc.RpcError) as e:
        client.documents.Ingest(iter(reqs))
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT and "one stream per collection" in e.value.details()


def test_restart_restores_collections_and_trained_index(tmp_path):
    data = tmp_path / "data"
    srv = ServerThread(data).start()
    # A tiny index config so that 660 chunks (>= 39 per centroid x 16) are enough to train the quantizers.
    words = ["river", "mountain", "violin", "galaxy", "protein", "harbour", "glacier", "algebra", "tulip", "engine"]
    docs = [
        {
            "id": f"d{i}",
            "text": f"Note {i} about the {words[i % 10]} and the {words[(i * 7 + 3) % 10]}, variant {i // 10}.",
            "metadata": {"n": i % 3},
        }
        for i in range(660)
    ]
    try:
        with srv.client(timeout=300) as c:
            c.create_collection("big", nbits=4, m=48, nlist=4, nprobe=4)
            assert len(list(c.ingest("big", docs))) == len(docs)
            info = c.get_collection("big")
            assert info.index_state == "trained"
            queries = ["the violin and the galaxy", "a glacier near the harbour", "protein algebra"]
            before = [c.search("big", q, k=5) for q in queries]
            filtered = c.search("big", "engine", k=5, filter={"n": 1})
            assert all(h["metadata"]["n"] == 1 for h in filtered)
    finally:
        srv.stop()

    srv = ServerThread(data).start()
    try:
        with srv.client(timeout=300) as c:
            info2 = c.get_collection("big")
            assert (info2.document_count, info2.chunk_count, info2.index_state) == (660, info.chunk_count, "trained")
            after = [c.search("big", q, k=5) for q in queries]
            assert [[h["chunk_id"] for h in r] for r in after] == [[h["chunk_id"] for h in r] for r in before]
            assert [[h["doc_id"] for h in r] for r in after] == [[h["doc_id"] for h in r] for r in before]
    finally:
        srv.stop()
