"""Search over a real gRPC channel: metadata filters applied inside the search, the default and the bounds of k."""

from __future__ import annotations

import grpc
import pytest

from pqrag.v1 import search_pb2
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


# --- search modes (dense, lexical, hybrid) through the real server -----------------------------------------------


def ids(hits):
    return [h["doc_id"] for h in hits]


def test_three_modes_with_their_ranks(client):
    client.create_collection("kb")
    ingest_all(client, "kb", DOCS)
    lexical = client.search("kb", "Sicilian", k=4, mode="lexical")
    assert ids(lexical) == ["chess"]  # one chunk holds the word
    assert lexical[0]["lexical_rank"] == 1 and lexical[0]["lexical_score"] == pytest.approx(lexical[0]["score"])
    assert lexical[0]["dense_rank"] is None and lexical[0]["dense_score"] is None
    dense = client.search("kb", "Sicilian", k=4, mode="dense")
    assert len(dense) == 4 and [h["dense_rank"] for h in dense] == [1, 2, 3, 4]
    assert all(h["lexical_rank"] is None for h in dense) and dense[0]["dense_score"] == pytest.approx(dense[0]["score"])
    hybrid = client.search("kb", "Sicilian Defence chess", k=4, mode="hybrid")
    top = hybrid[0]
    assert top["doc_id"] == "chess" and top["dense_rank"] == 1 and top["lexical_rank"] == 1
    assert top["score"] == pytest.approx(1.0)  # first in both lists: 0.4 x 1 + 0.6 x 1 after min-max normalising
    # no mode: the collection's default, hybrid
    assert client.get_collection("kb").default_search_mode == search_pb2.SEARCH_MODE_HYBRID
    assert client.search("kb", "Sicilian Defence chess", k=4) == hybrid


def test_filters_and_fusion_parameters(client):
    client.create_collection("kb")
    ingest_all(client, "kb", DOCS)
    assert ids(client.search("kb", "levain cocotte", k=5, mode="lexical", filter={"lang": "fr"})) == ["pain"]
    assert client.search("kb", "levain", k=5, mode="lexical", filter={"lang": "en"}) == []  # filtered inside FTS5
    hits = client.search("kb", "bread oven yeast", k=2, mode="hybrid", filter={"topic": {"$in": ["games", "geology"]}})
    assert len(hits) == 2 and {h["doc_id"] for h in hits} == {"chess", "volcano"}
    q = "sourdough starter"
    weighted = client.search("kb", q, k=4, mode="hybrid", fusion={"alpha": 1.0})
    assert ids(weighted) == ids(client.search("kb", q, k=4, mode="dense"))  # alpha 1: the dense ranking
    rrf = client.search("kb", q, k=1, mode="hybrid", fusion={"rrf_k": 1, "candidates": 3})
    assert rrf[0]["score"] == pytest.approx(1 / (1 + rrf[0]["dense_rank"]) + 1 / (1 + rrf[0]["lexical_rank"]))
    for fusion, message in [({"alpha": 2.0}, "alpha"), ({"rrf_k": 0}, "rrf_k"), ({"candidates": 5000}, "candidates")]:
        with pytest.raises(grpc.RpcError) as e:
            client.search("kb", q, mode="hybrid", fusion=fusion)
        assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details()


def test_user_text_is_never_fts5_syntax(client):
    client.create_collection("kb")
    ingest_all(client, "kb", DOCS)
    for q in ["NEAR(magma crust)", "text:lava", "lav*", '"unbalanced', "(magma OR", "^magma", "AND OR NOT", "?!"]:
        for mode in ("lexical", "hybrid"):
            client.search("kb", q, k=3, mode=mode)  # OK, never an FTS5 syntax error
    assert ids(client.search("kb", "NEAR(magma crust)", mode="lexical")) == ["volcano"]  # the words, not NEAR
    assert client.search("kb", "lav*", mode="lexical") == []  # not a prefix query: no word "lav"
    assert client.search("kb", "?!", mode="lexical") == []


def test_a_collection_default_mode_and_vector_queries(client):
    created = client.create_collection("lex", search_mode="lexical")
    assert created.default_search_mode == search_pb2.SEARCH_MODE_LEXICAL
    ingest_all(client, "lex", DOCS)
    assert ids(client.search("lex", "Sicilian", k=4)) == ["chess"]  # lexical by default: one match, not four
    assert len(client.search("lex", "Sicilian", k=4, mode="dense")) == 4
    v = [0.0] * 384
    v[0] = 1.0
    assert len(client.search("lex", vector=v, k=2)) == 2  # a vector query is dense whatever the default
    with pytest.raises(grpc.RpcError) as e:
        client.search("lex", vector=v, k=2, mode="hybrid")
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT and "query text" in e.value.details()


def test_a_first_release_data_dir_serves_every_mode(tmp_path):
    """A data directory written by the first release (schema 1, no full-text index): the server migrates it on
    start and answers lexical and hybrid searches over the chunks it already held."""
    from retrieval.embedder import get_embedder
    from tests.retrieval.test_schema import DOCS as OLD_DOCS
    from tests.retrieval.test_schema import write_v1_store
    from tests.service.conftest import ServerThread

    data = tmp_path / "data"
    data.mkdir()
    write_v1_store(data / "pqrag.sqlite3", OLD_DOCS, get_embedder(device="cpu").embed(list(OLD_DOCS.values())))
    srv = ServerThread(data).start()
    try:
        with srv.client(timeout=120) as c:
            assert c.get_collection("old").chunk_count == 3
            for mode in ("dense", "lexical", "hybrid"):
                assert ids(c.search("old", "what raises the tides?", k=1, mode=mode)) == ["moon"], mode
    finally:
        srv.stop()
