"""Collections over a real gRPC channel: create, get, paged list, delete, and their errors."""

from __future__ import annotations

import grpc
import pytest

from pqrag.v1 import collections_pb2
from tests.service.conftest import code_of


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
