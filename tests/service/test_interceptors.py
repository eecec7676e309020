"""The gate in front of every RPC, over real channels: keys and roles (UNAUTHENTICATED / PERMISSION_DENIED), scopes
(each message of a stream checked; ListCollections narrowed), health and reflection open, revocation seen by a
running server, bytes that are not a message answered INVALID_ARGUMENT (unary and streaming), and the audit log."""

from __future__ import annotations

import json
import time

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from pqrag.v1 import collections_pb2, documents_pb2, rag_pb2, search_pb2
from service import auth
from service.auth import KeyStore, Role
from tests.service.conftest import DOCS, ServerThread, code_of, ingest_all

S = grpc.StatusCode


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    data = tmp_path_factory.mktemp("secured") / "data"
    keys = KeyStore(data)
    made = {
        "admin": keys.create(Role.ADMIN, name="admin")[1],
        "writer": keys.create(Role.WRITE, name="writer")[1],
        "reader": keys.create(Role.READ, name="reader")[1],
        "docs-writer": keys.create(Role.WRITE, collections=["docs"], name="docs-writer")[1],
        "docs-reader": keys.create(Role.READ, collections=["docs"], name="docs-reader")[1],
    }
    srv = ServerThread(data).start()
    with srv.client(api_key=made["admin"], timeout=120) as c:
        for name in ("docs", "other"):
            c.create_collection(name)
            ingest_all(c, name, DOCS[:2])
    yield srv, made, data
    srv.stop()


def fails(code, call):
    with pytest.raises(grpc.RpcError) as e:
        call()
    assert code_of(e) == code, e.value.details()
    return e.value.details()


def test_no_key_or_a_wrong_key_is_unauthenticated_but_health_and_reflection_stay_open(secured):
    srv, made, _ = secured
    with srv.client() as c:
        assert "requires an API key" in fails(S.UNAUTHENTICATED, lambda: c.search("docs", "bread"))
        fails(S.UNAUTHENTICATED, lambda: list(c.ingest("docs", DOCS[:1])))
        fails(S.UNAUTHENTICATED, lambda: c.list_collections())
        assert c.health() == "SERVING"
        assert "pqrag.v1.Search" in set(ProtoReflectionDescriptorDatabase(c.channel).get_services())
    wrong = made["admin"][:-2] + ("xx" if not made["admin"].endswith("xx") else "yy")
    with srv.client(api_key=wrong) as c:
        assert "not valid" in fails(S.UNAUTHENTICATED, lambda: c.get_collection("docs"))


def test_roles(secured):
    srv, made, _ = secured
    with srv.client(api_key=made["reader"]) as c:
        assert c.search("docs", "bread", k=1)
        assert c.get_document("other", DOCS[0]["id"]).id == DOCS[0]["id"]
        assert {x.name for x in c.list_collections()} == {"docs", "other"}
        assert "write role" in fails(S.PERMISSION_DENIED, lambda: ingest_all(c, "docs", DOCS[2:3]))
        fails(S.PERMISSION_DENIED, lambda: c.delete_document("docs", DOCS[0]["id"]))
        fails(S.PERMISSION_DENIED, lambda: c.create_collection("mine"))
    with srv.client(api_key=made["writer"]) as c:
        assert ingest_all(c, "other", DOCS[2:3])[0].document_id == DOCS[2]["id"]
        c.delete_document("other", DOCS[2]["id"])
        assert "admin role" in fails(S.PERMISSION_DENIED, lambda: c.delete_collection("other"))
        fails(S.PERMISSION_DENIED, lambda: c.create_collection("mine"))
        assert "admin role" in fails(S.PERMISSION_DENIED, lambda: c.update_collection("other", reader_threshold=1.0))


def test_scoped_keys_see_and_touch_their_collections_only(secured):
    srv, made, _ = secured
    with srv.client(api_key=made["docs-reader"]) as c:
        assert [x.name for x in c.list_collections()] == ["docs"]
        assert c.get_collection("docs").name == "docs"
        assert "may not use collection" in fails(S.PERMISSION_DENIED, lambda: c.get_collection("other"))
        fails(S.PERMISSION_DENIED, lambda: c.search("other", "bread"))
        fails(S.PERMISSION_DENIED, lambda: c.ask("other", "why?"))
    with srv.client(api_key=made["docs-writer"]) as c:
        acks = ingest_all(c, "docs", DOCS[2:3])
        assert [a.document_id for a in acks] == [DOCS[2]["id"]]
        fails(S.PERMISSION_DENIED, lambda: ingest_all(c, "other", DOCS[2:3]))
        # A later message of a stream naming another collection is checked too (before the stream-level check).
        reqs = [
            documents_pb2.IngestRequest(collection="docs", document=documents_pb2.Document(id="s1", text="one")),
            documents_pb2.IngestRequest(collection="other", document=documents_pb2.Document(id="s2", text="two")),
        ]
        fails(S.PERMISSION_DENIED, lambda: list(c.documents.IngestStream(iter(reqs))))
    with srv.client(api_key=made["admin"]) as c:
        fails(S.NOT_FOUND, lambda: c.get_document("other", "s2"))


def test_a_key_revoked_while_the_server_runs_stops_working_within_seconds(secured):
    srv, _, data = secured
    keys = KeyStore(data)
    _, key = keys.create(Role.READ, name="temp")
    time.sleep(auth.RELOAD_INTERVAL_S + 0.1)
    with srv.client(api_key=key) as c:
        assert c.get_collection("docs").name == "docs"
        keys.revoke("temp")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                c.get_collection("docs")
            except grpc.RpcError as exc:
                assert exc.code() == S.UNAUTHENTICATED
                break
            time.sleep(0.2)
        else:
            pytest.fail("the revoked key still works after 5 s")


def raw_call(channel, method: str, streaming: str = "unary_unary"):
    """A callable sending raw bytes (no serializer), so the test controls every byte on the wire."""
    return getattr(channel, streaming)(method, request_serializer=None, response_deserializer=None)


BAD_BYTES = [
    b"\x0a\x03\xff\xfe\xfd",  # field 1 (a string) with bad UTF-8
    b"\xff\xff\xff\xff",  # a corrupt wire format
    b"\x0a\x10ab",  # a length past the end
    b"\x2a" + b"\x80" * 11,  # a varint that never ends
]


def deep_struct_bytes(depth: int, filter_tag: bytes = b"\x2a") -> bytes:
    """Struct{k: Value{struct_value: Struct{k: ...}}} nested `depth` times, encoded by hand (lengths as varints)."""

    def varint(n: int) -> bytes:
        out = b""
        while True:
            b, n = n & 0x7F, n >> 7
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out

    struct = b""
    for _ in range(depth):
        value = b"\x2a" + varint(len(struct)) + struct  # Value.struct_value = 5
        entry = b"\x0a\x01k\x12" + varint(len(value)) + value  # FieldsEntry key = 1, value = 2
        struct = b"\x0a" + varint(len(entry)) + entry  # Struct.fields = 1
    # collection = 1, text/question = 2, filter: SearchRequest's field 5 (tag 0x2a), AskRequest's field 4 (0x22)
    return b"\x0a\x04docs\x12\x01q" + filter_tag + varint(len(struct)) + struct


def test_bytes_that_are_not_a_message_get_invalid_argument(secured):
    srv, made, _ = secured
    with srv.client(api_key=made["admin"]) as c:
        before = [(x.name, x.document_count) for x in c.list_collections()]
        for method in ("/pqrag.v1.Search/Search", "/pqrag.v1.Documents/GetDocument", "/pqrag.v1.Rag/Ask"):
            call = raw_call(c.channel, method, "unary_stream" if method.endswith("Ask") else "unary_unary")
            deep = {"Search": [deep_struct_bytes(200)], "Ask": [deep_struct_bytes(200, b"\x22")]}
            for bad in [*BAD_BYTES, *deep.get(method.rsplit("/", 1)[-1], [])]:
                streams = method.endswith("Ask")
                details = fails(S.INVALID_ARGUMENT, lambda c=call, b=bad, s=streams: list(c(b)) if s else c(b))
                assert "not a valid message" in details and len(details) < 1000
        ingest = raw_call(c.channel, "/pqrag.v1.Documents/IngestStream", "stream_stream")
        good = documents_pb2.IngestRequest(
            collection="docs", document=documents_pb2.Document(id="fine", text="a fine document")
        ).SerializeToString()
        for bad in BAD_BYTES:
            fails(S.INVALID_ARGUMENT, lambda bad=bad: list(ingest(iter([bad]))))
            # a bad message after a good one: the good one is stored and acknowledged, then the stream fails
            acks = []
            with pytest.raises(grpc.RpcError) as e:
                for ack in ingest(iter([good, bad])):
                    acks.append(documents_pb2.IngestAck.FromString(ack))
            assert code_of(e) == S.INVALID_ARGUMENT and [a.document_id for a in acks] == ["fine"]
        summary = raw_call(c.channel, "/pqrag.v1.Documents/Ingest", "stream_unary")
        fails(S.INVALID_ARGUMENT, lambda: summary(iter([BAD_BYTES[0]])))
        assert search_pb2.SearchRequest.FromString(deep_struct_bytes(20)).filter  # a shallow one parses
        assert rag_pb2.AskRequest.FromString(deep_struct_bytes(20, b"\x22")).filter
        after = [(x.name, x.document_count) for x in c.list_collections()]
        assert after == [(n, d + (n == "docs")) for n, d in before]  # "fine", stored once (then replaced)
        assert c.health() == "SERVING"


def test_audit_log_records_write_and_admin_calls(secured):
    srv, made, data = secured
    with srv.client(api_key=made["docs-writer"]) as c:
        ingest_all(c, "docs", [{"id": "audited", "text": "an audited document"}])
        c.delete_document("docs", "audited")
        fails(S.PERMISSION_DENIED, lambda: c.delete_document("other", DOCS[0]["id"]))
    with srv.client(api_key=made["reader"]) as c:
        c.search("docs", "bread")  # reads are not audited
    with srv.client(api_key=made["admin"]) as c:
        c.update_collection("docs", search_mode="hybrid")  # the default it has: nothing else changes
    srv.server.gate.audit.close()  # flush
    entries = [json.loads(line) for line in (data / "audit.log").read_text().splitlines()]
    mine = [e for e in entries if e["key"] == "docs-writer"]
    assert [(e["method"], e["collection"], e["outcome"]) for e in mine][-3:] == [
        ("IngestStream", "docs", "OK"),
        ("DeleteDocument", "docs", "OK"),
        ("DeleteDocument", "other", "PERMISSION_DENIED"),
    ]
    assert mine[-3]["ids"] == ["audited"] and mine[-2]["ids"] == ["audited"]
    assert not any(e["method"] == "Search" for e in entries)
    assert {e["method"] for e in entries if e["key"] == "admin"} >= {"CreateCollection", "IngestStream"}
    assert ("UpdateCollection", "docs", "OK") in [(e["method"], e["collection"], e["outcome"]) for e in entries]
    for secret in made.values():
        assert secret not in (data / "audit.log").read_text()


def test_no_reflection_flag(tmp_path):
    srv = ServerThread(tmp_path / "data", reflection=False).start()
    try:
        with srv.client() as c:
            assert c.health() == "SERVING"
            with pytest.raises(grpc.RpcError):
                ProtoReflectionDescriptorDatabase(c.channel).get_services()
    finally:
        srv.stop()


def test_unknown_methods_of_the_api_need_admin():
    from service.interceptors import METHOD_ROLES

    for name in ("Search", "Documents", "Collections", "Rag"):
        module = __import__(f"pqrag.v1.{name.lower()}_pb2", fromlist=["DESCRIPTOR"])
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                assert f"/{service.full_name}/{m.name}" in METHOD_ROLES, f"{m.name} has no role: it would need admin"
    assert collections_pb2.DESCRIPTOR.services_by_name["Collections"]
