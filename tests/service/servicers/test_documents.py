"""Documents over a real gRPC channel: streamed ingestion (acknowledgements and summaries), upserts, lookup by
id with character spans, deletion."""

from __future__ import annotations

import grpc
import pytest

from tests.service.conftest import DOCS, code_of, ingest_all


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
