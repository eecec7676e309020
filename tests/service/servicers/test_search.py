"""Search over a real gRPC channel: metadata filters applied inside the search, the default and the bounds of k."""

from __future__ import annotations

import grpc
import pytest

from tests.service.conftest import DOCS, code_of, ingest_all


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
