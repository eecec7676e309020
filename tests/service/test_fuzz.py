"""Property-based fuzzing (hypothesis) of every RPC against a live server with a generator.

Requests are drawn from each method's message descriptor, so every field is covered, fields added later too:
random and hostile strings (NUL, SQL and FTS metacharacters, paths, 10 KB names), extreme and negative-on-the-wire
integers, NaN and infinities, huge repeated fields, deep Structs (past protobuf's nesting limit); then some encodings
are corrupted on the wire (bad UTF-8, truncation). The properties: no call ends INTERNAL or UNKNOWN (nor with an
oversized message), the server keeps serving, and a rejected call changes nothing stored.

Examples are derandomized (the same in every run) and kept to a few hundred in all for CI.
"""

from __future__ import annotations

import math

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pqrag.v1 import collections_pb2, documents_pb2, rag_pb2, search_pb2
from service.status import MAX_DETAILS
from tests.service.conftest import RAG_DOCS, ServerThread

HOSTILE = [
    "",
    " ",
    "kb",
    "\x00",
    "kb\x00",
    "' OR 1=1 --",
    '"; DROP TABLE chunks; --',
    "*",
    "NEAR(a b)",
    'a AND "b" OR NOT c*',
    "$in",
    "$eq",
    "..",
    "../../etc/passwd",
    "~/models",
    "/tmp",
    "all-MiniLM-L6-v2",
    "%s%n%x",
    "\u202e\ufeff",
    "é東京😀",
    "x" * 10_000,
    "system",
    "user",
    "assistant",
]
STRINGS = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40), st.text(min_size=500, max_size=600))
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2**31 - 1, -(2**31), 2**32 - 1, 2**53, 1e308, -1e-308]),
)
JSON = st.recursive(
    st.none() | st.booleans() | NUMBERS | STRINGS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(STRINGS, inner, max_size=4),
    max_leaves=12,
)
INT_RANGES = {
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
}
OUTPUT_ONLY = {"create_time", "document_count", "chunk_count", "index_state", "dimension", "chunks"}


def deep_struct(depth: int) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    inner = s
    for _ in range(depth):
        inner = inner.fields["k"].struct_value
    inner.fields["leaf"].string_value = "x"
    return s


def draw_struct(data, s: struct_pb2.Struct) -> None:
    choice = data.draw(st.sampled_from(["filter", "filter", "filter", "json", "json", "deep"]))
    if choice == "deep":
        s.CopyFrom(deep_struct(data.draw(st.sampled_from([50, 99, 101, 150]))))
    elif choice == "filter":  # shaped like a metadata filter, at and past its limits
        n = data.draw(st.sampled_from([1, 3, 64, 65, 1000]))
        values = data.draw(st.lists(JSON, max_size=5))
        values += list(range(data.draw(st.sampled_from([0, 1020, 1030, 5000]))))
        spec = {f"f{i}": {data.draw(st.sampled_from(["$in", "$eq", "$gt", ""])): values} for i in range(n)}
        s.update(spec)
    else:
        s.update(data.draw(st.dictionaries(STRINGS, JSON, max_size=5)))


# Strings of fields that a valid request needs: mostly plausible, so the fuzzing reaches past the first check.
PLAUSIBLE = {
    "collection": st.sampled_from(["kb", "kb", "kb", "nope"]),
    "name": st.sampled_from(["kb", "fresh", "nope"]),
    "id": st.sampled_from(["volcano", "new-doc", ""]),
    "document_id": st.sampled_from(["volcano", "bread", "missing"]),
    "text": st.sampled_from(["Why do volcanoes erupt?", "Sourdough bread and wild yeast.", "lava"]),
    "question": st.sampled_from(["Why do volcanoes erupt?", "What is in Saturn's rings?"]),
    "content": st.sampled_from(["Why do volcanoes erupt?", "Tell me more."]),
    "role": st.sampled_from(["user", "assistant", "system"]),
    "kind": st.sampled_from(["ivfpq", "pq", "flat"]),
    "metric": st.sampled_from(["ip", "l2"]),
    "backend": st.sampled_from(["faiss", "torch"]),
}
ALWAYS = {"collection", "name", "text", "question", "content", "role", "messages", "document"}  # mostly set
OFTEN = st.sampled_from([True] * 9 + [False])
SOMETIMES = st.sampled_from([False, True, False])


def draw_scalar(data, field):
    if field.type == F.TYPE_STRING:
        if field.name in PLAUSIBLE and data.draw(st.integers(0, 3)) > 0:
            return data.draw(PLAUSIBLE[field.name])
        return data.draw(STRINGS)
    if field.type == F.TYPE_BOOL:
        return data.draw(st.booleans())
    if field.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        value = data.draw(st.one_of(st.floats(0, 1), NUMBERS))
        return float(value) if field.type == F.TYPE_DOUBLE or not math.isfinite(value) or abs(value) < 3e38 else 0.0
    if field.type in INT_RANGES:
        lo, hi = INT_RANGES[field.type]
        plausible = st.integers(1, 8)
        return data.draw(st.one_of(plausible, plausible, st.sampled_from([0, lo, hi, 1000, 1001]), st.integers(lo, hi)))
    if field.type == F.TYPE_ENUM:
        return data.draw(st.sampled_from([v.number for v in field.enum_type.values]))
    raise AssertionError(f"no strategy for {field.full_name} ({field.type})")


def draw_message(data, msg, depth: int = 0):
    """Fill `msg` (in place) from its descriptor: each field set or left unset, oneofs at most one."""
    if msg.DESCRIPTOR.full_name == "google.protobuf.Struct":
        draw_struct(data, msg)
        return msg
    chosen_oneofs = {
        o.name: data.draw(st.sampled_from([*[f.name for f in o.fields], None])) for o in msg.DESCRIPTOR.oneofs
    }
    for field in msg.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        real_oneof = oneof is not None and not oneof.name.startswith("_")  # proto3 `optional` is a synthetic one
        if real_oneof and chosen_oneofs[oneof.name] != field.name:
            continue
        if field.name in OUTPUT_ONLY:
            continue
        if not real_oneof and not data.draw(OFTEN if field.name in ALWAYS else SOMETIMES):
            continue
        if field.is_repeated:
            n = data.draw(st.sampled_from([0, 1, 1, 2, 3, 384, 385, 5000]))
            if field.type == F.TYPE_MESSAGE:
                for _ in range(min(n, 3 if depth else 5)):
                    draw_message(data, getattr(msg, field.name).add(), depth + 1)
            elif n > 3 and field.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
                value = data.draw(st.sampled_from([0.1, float("nan"), float("inf")]))
                getattr(msg, field.name).extend([value] * n)
            else:
                getattr(msg, field.name).extend(draw_scalar(data, field) for _ in range(min(n, 4)))
        elif field.type == F.TYPE_MESSAGE:
            getattr(msg, field.name).SetInParent()  # set, even when left empty (a oneof's message member)
            if depth < 3:
                draw_message(data, getattr(msg, field.name), depth + 1)
        else:
            setattr(msg, field.name, draw_scalar(data, field))
    return msg


def corrupt(data, raw: bytes) -> bytes:
    """Sometimes damage the encoding: a string field 1 with bad UTF-8 appended, a truncation, a flipped byte."""
    how = data.draw(st.sampled_from(["none"] * 12 + ["utf8", "truncate", "flip"]))
    if how == "utf8":
        return raw + b"\x0a\x03\xff\xfe\x80"
    if how == "truncate" and raw:
        return raw[: data.draw(st.integers(0, len(raw) - 1))]
    if how == "flip" and raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        return raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1 :]
    return raw


# method -> (request class, client streaming, server streaming)
METHODS = {
    "/pqrag.v1.Collections/CreateCollection": (collections_pb2.CreateCollectionRequest, False, False),
    "/pqrag.v1.Collections/GetCollection": (collections_pb2.GetCollectionRequest, False, False),
    "/pqrag.v1.Collections/ListCollections": (collections_pb2.ListCollectionsRequest, False, False),
    "/pqrag.v1.Collections/UpdateCollection": (collections_pb2.UpdateCollectionRequest, False, False),
    "/pqrag.v1.Collections/DeleteCollection": (collections_pb2.DeleteCollectionRequest, False, False),
    "/pqrag.v1.Documents/Ingest": (documents_pb2.IngestRequest, True, False),
    "/pqrag.v1.Documents/IngestStream": (documents_pb2.IngestRequest, True, True),
    "/pqrag.v1.Documents/GetDocument": (documents_pb2.GetDocumentRequest, False, False),
    "/pqrag.v1.Documents/DeleteDocument": (documents_pb2.DeleteDocumentRequest, False, False),
    "/pqrag.v1.Search/Search": (search_pb2.SearchRequest, False, False),
    "/pqrag.v1.Rag/Ask": (rag_pb2.AskRequest, False, True),
    "/pqrag.v1.Rag/Chat": (rag_pb2.ChatRequest, False, True),
}


def test_every_rpc_of_the_api_is_fuzzed():
    modules = (collections_pb2, documents_pb2, search_pb2, rag_pb2)
    api = {
        f"/{s.full_name}/{m.name}"
        for mod in modules
        for s in mod.DESCRIPTOR.services_by_name.values()
        for m in s.methods
    }
    assert api == set(METHODS)


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_model_dir):
    srv = ServerThread(tmp_path_factory.mktemp("fuzz") / "data", model=str(tiny_model_dir)).start()
    client = srv.client(timeout=60)
    client.create_collection("kb")
    list(client.ingest("kb", RAG_DOCS))
    yield srv, client
    client.close()
    srv.stop()


def fingerprint(client) -> list[tuple]:
    return sorted((c.name, c.document_count, c.chunk_count) for c in client.list_collections())


def ensure_kb(client) -> None:
    if "kb" not in [c.name for c in client.list_collections()]:
        client.create_collection("kb")
        list(client.ingest("kb", RAG_DOCS))


def call_raw(client, method: str, payload, streaming_in: bool, streaming_out: bool):
    channel = client.channel
    kind = {(False, False): "unary_unary", (False, True): "unary_stream", (True, False): "stream_unary"}.get(
        (streaming_in, streaming_out), "stream_stream"
    )
    fn = getattr(channel, kind)(method, request_serializer=None, response_deserializer=None)
    out = fn(iter(payload) if streaming_in else payload, timeout=60)
    return list(out) if streaming_out else [out]


FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@pytest.mark.parametrize("method", sorted(METHODS))
@FUZZ
@given(data=st.data())
def test_fuzzed_requests_never_fail_the_server(live, method, data):
    srv, client = live
    cls, streaming_in, streaming_out = METHODS[method]
    n = data.draw(st.integers(1, 3)) if streaming_in else 1
    messages = [draw_message(data, cls()) for _ in range(n)]
    if streaming_in and data.draw(st.booleans()):
        messages[0].collection = "kb"  # a real stream's first message names a collection
    payload = [corrupt(data, m.SerializeToString()) for m in messages]
    ensure_kb(client)  # a fuzzed DeleteCollection may have deleted it
    before = fingerprint(client)
    responses = []
    try:
        responses = call_raw(client, method, payload if streaming_in else payload[0], streaming_in, streaming_out)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), f"{code}: {details[:500]}"
        assert code != grpc.StatusCode.DEADLINE_EXCEEDED, "a fuzzed request hung the server"
        assert len(details) <= MAX_DETAILS and details, details[:300]
        # A stream of documents stores those before the one that failed: IngestStream acknowledged them, Ingest's
        # error says how many; anything else refused changes nothing.
        if fingerprint(client) != before:
            assert streaming_in, f"{method} was refused ({code.name}) but changed the store"
            assert (
                streaming_out
                or "documents are stored)" in details
                or "documents before this batch are stored" in details
            ), details
    else:
        assert responses is not None
    assert client.health() == "SERVING"


def test_the_server_still_answers_after_the_fuzzing(live):
    srv, client = live
    assert client.health() == "SERVING"
    client.create_collection("after")
    list(client.ingest("after", RAG_DOCS))
    assert client.search("after", "sourdough bread", k=1)[0]["doc_id"] == "bread"
