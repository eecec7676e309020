"""The server over a real gRPC channel: health and reflection, bad input across the services, restarts, and the
Server object create_server returns (its port, and stop releasing what it owns)."""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from service.server import SERVICE_NAMES
from tests.service.conftest import DOCS, ServerThread, code_of, ingest_all


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


def test_create_server_returns_one_object_that_stop_releases(tmp_path):
    import asyncio

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from retrieval import Collections
    from service.server import ServerConfig, create_server

    async def main():
        server = await create_server(ServerConfig(data_dir=str(tmp_path / "data"), port=0))
        assert server.port > 0 and server.generator is None and server.collections.names() == []
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        await server.stop(grace=0)
        return server

    server = asyncio.run(main())
    with pytest.raises(RuntimeError, match="closed"):
        server.collections.names()
    with pytest.raises(RuntimeError):
        server.executor.submit(print)
    Collections(tmp_path / "data").close()  # the data directory's lock is released


def test_a_server_that_fails_to_start_releases_the_data_directory(tmp_path):
    with pytest.raises(Exception):  # noqa: B017 - whatever the loader raises for a missing checkpoint
        ServerThread(tmp_path / "data", model=str(tmp_path / "no-such-model")).start()
    ServerThread(tmp_path / "data").start().stop()  # the directory's lock was released
