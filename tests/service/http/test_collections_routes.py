"""REST for collections and search over real HTTP: create (with index and chunking settings), list with counts and
index state, get, delete, search with a filter, and the errors in OpenAI's shape."""

from __future__ import annotations

from tests.service.conftest import DOCS


def test_collection_lifecycle(http):
    created = http.post(
        "/v1/collections", json={"name": "life", "index": {"kind": "flat"}, "chunking": {"chunk_tokens": 64}}
    )
    assert created.status_code == 201
    c = created.json()
    assert c["object"] == "collection" and c["name"] == "life" and c["dimension"] == 384
    assert c["index"]["kind"] == "flat" and c["chunking"]["chunk_tokens"] == 64 and c["embedder"] == "all-MiniLM-L6-v2"
    assert (c["document_count"], c["chunk_count"], c["index_state"]) == (0, 0, "exact")

    again = http.post("/v1/collections", json={"name": "life"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_exists"

    assert http.post("/v1/collections/life/documents", json={"documents": DOCS}).status_code == 200
    listing = http.get("/v1/collections").json()
    assert listing["object"] == "list" and listing["next_page_token"] == ""
    life = next(x for x in listing["data"] if x["name"] == "life")
    assert life["document_count"] == 4 and life["chunk_count"] >= 4
    first = http.get("/v1/collections", params={"page_size": 1}).json()
    assert len(first["data"]) == 1 and first["next_page_token"] == first["data"][0]["name"]
    assert http.get("/v1/collections/life").json()["document_count"] == 4

    deleted = http.delete("/v1/collections/life")
    assert deleted.json() == {"id": "life", "object": "collection.deleted", "deleted": True}
    gone = http.get("/v1/collections/life")
    assert gone.status_code == 404 and gone.json()["error"]["message"] == "collection 'life' not found"
    assert http.delete("/v1/collections/life").status_code == 404


def test_bad_collection_settings_are_400s_naming_the_field(http):
    r = http.post("/v1/collections", json={"name": "bad", "index": {"kidn": "flat"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "index" and "kidn" in r.json()["error"]["message"]
    r = http.post("/v1/collections", json={"name": "bad", "index": {"metric": "cosine"}})
    assert r.status_code == 400 and "metric" in r.json()["error"]["message"]
    r = http.post("/v1/collections", json={"name": "bad/name"})
    assert r.status_code == 400
    r = http.post("/v1/collections", json={"nme": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] in ("name", "nme")


def test_search_with_top_k_filter_and_spans(http):
    http.post("/v1/collections", json={"name": "find"})
    http.post("/v1/collections/find/documents", json={"documents": DOCS})
    r = http.post("/v1/collections/find/search", json={"query": "bread in a hot oven", "top_k": 2})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and len(body["data"]) == 2 and body["embed_ms"] >= 0
    hit = body["data"][0]
    assert hit["document_id"] in ("bread", "pain") and set(hit) == {
        "document_id",
        "chunk_id",
        "score",
        "text",
        "metadata",
        "source",
        "start",
        "end",
    }
    doc = next(d for d in DOCS if d["id"] == hit["document_id"])
    assert doc["text"][hit["start"] : hit["end"]] == hit["text"]  # the span the console highlights
    fr = http.post("/v1/collections/find/search", json={"query": "bread", "filter": {"lang": "fr"}}).json()
    assert [h["document_id"] for h in fr["data"]] == ["pain"]
    assert http.post("/v1/collections/find/search", json={"query": "x", "top_k": 0}).status_code == 400
    assert http.post("/v1/collections/nope/search", json={"query": "x"}).status_code == 404
    r = http.post("/v1/collections/find/search", json={"query": "x", "filter": {"lang": {"$regex": "f"}}})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    http.delete("/v1/collections/find")


def test_a_collections_reader_threshold_and_min_similarity_over_rest(http):
    body = {"name": "cal", "grounding": "extract", "reader_threshold": -1.25, "min_similarity": 0.2}
    created = http.post("/v1/collections", json=body)
    assert created.status_code == 201 and created.json()["reader_threshold"] == -1.25
    assert created.json()["min_similarity"] == 0.2
    got = http.get("/v1/collections/cal").json()
    assert (got["reader_threshold"], got["min_similarity"]) == (-1.25, 0.2)
    plain = http.post("/v1/collections", json={"name": "plain-rt"}).json()
    assert plain["reader_threshold"] is None  # the reader's own null_threshold
    assert plain["min_similarity"] is None  # no cut
    listing = {c["name"]: c for c in http.get("/v1/collections").json()["data"]}
    assert listing["cal"]["reader_threshold"] == -1.25 and listing["plain-rt"]["reader_threshold"] is None
    assert listing["cal"]["min_similarity"] == 0.2 and listing["plain-rt"]["min_similarity"] is None
    for bad in (2e6, True, "0.5"):  # out of range (the catalog's check), a bool or a string (the body's)
        r = http.post("/v1/collections", json={"name": "bad-rt", "min_similarity": bad})
        assert r.status_code == 400, bad
        assert "min_similarity" in (r.json()["error"]["message"] + str(r.json()["error"].get("param"))), r.json()
    r = http.post(
        "/v1/collections",
        content='{"name": "bad-rt", "min_similarity": -Infinity}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and "min_similarity must be a finite number" in r.json()["error"]["message"]
    for bad in (250, True, "1.5"):  # out of range (the catalog's check), a bool or a string (the body's)
        r = http.post("/v1/collections", json={"name": "bad-rt", "reader_threshold": bad})
        assert r.status_code == 400, bad
        assert "reader_threshold" in (r.json()["error"]["message"] + str(r.json()["error"].get("param"))), r.json()
    r = http.post(
        "/v1/collections",
        content='{"name": "bad-rt", "reader_threshold": NaN}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and "finite" in r.json()["error"]["message"]
    assert http.get("/v1/collections/bad-rt").status_code == 404
    for name in ("cal", "plain-rt"):
        assert http.delete(f"/v1/collections/{name}").status_code == 200


def test_patch_a_collection_is_a_json_merge_patch(http):
    created = http.post("/v1/collections", json={"name": "upd", "grounding": "quote", "reader_threshold": -1.0}).json()
    assert (created["search_mode"], created["grounding"], created["reader_threshold"]) == ("hybrid", "quote", -1.0)
    r = http.patch("/v1/collections/upd", json={"reader_threshold": 2.5})
    assert r.status_code == 200
    assert (r.json()["search_mode"], r.json()["grounding"], r.json()["reader_threshold"]) == ("hybrid", "quote", 2.5)
    r = http.patch(
        "/v1/collections/upd",
        content='{"search_mode": "lexical", "grounding": "extract"}',
        headers={"content-type": "application/merge-patch+json"},  # RFC 7396's own media type
    )
    assert r.status_code == 200, r.json()
    got = http.get("/v1/collections/upd").json()
    assert (got["search_mode"], got["grounding"], got["reader_threshold"]) == ("lexical", "extract", 2.5)
    r = http.patch("/v1/collections/upd", json={"grounding": None, "reader_threshold": None})  # null: the default
    assert (r.json()["search_mode"], r.json()["grounding"], r.json()["reader_threshold"]) == ("lexical", None, None)
    r = http.patch("/v1/collections/upd", json={"search_mode": None})
    assert r.json()["search_mode"] == "hybrid"
    assert http.patch("/v1/collections/upd", json={}).json()["search_mode"] == "hybrid"  # nothing sent: no change
    r = http.patch("/v1/collections/upd", json={"min_similarity": 0.3})
    assert r.status_code == 200 and (r.json()["min_similarity"], r.json()["search_mode"]) == (0.3, "hybrid")
    assert http.get("/v1/collections/upd").json()["min_similarity"] == 0.3
    r = http.patch("/v1/collections/upd", json={"min_similarity": 0})  # 0 is a cut, not null
    assert r.status_code == 200 and r.json()["min_similarity"] == 0.0
    assert http.patch("/v1/collections/upd", json={"min_similarity": None}).json()["min_similarity"] is None

    for bad, says in (
        ({"reader_threshold": 250}, "reader_threshold must be a finite number"),
        ({"reader_threshold": True}, "reader_threshold"),
        ({"reader_threshold": "1.5"}, "reader_threshold"),
        ({"search_mode": "fuzzy"}, "search_mode must be one of"),
        ({"grounding": "strict"}, "grounding must be free, quote or extract"),
        ({"min_similarity": -2e6}, "min_similarity must be a finite number"),
        ({"min_similarity": False}, "min_similarity"),
        ({"min_similarity": "0.5"}, "min_similarity"),
        ({"min_similarity": 0.5, "grounding": "strict"}, "grounding"),  # all or nothing
        ({"embedder": "other"}, "updatable settings are search_mode, grounding, reader_threshold, min_similarity"),
        ({"index": {"kind": "flat"}, "reader_threshold": 1.0}, "cannot update 'index'"),
        ({"name": "renamed"}, "cannot update 'name'"),
    ):
        r = http.patch("/v1/collections/upd", json=bad)
        assert r.status_code == 400, (bad, r.json())
        error = r.json()["error"]
        assert says in error["message"] + str(error.get("param")), (bad, error)
    assert http.patch("/v1/collections/upd", json=[1]).status_code == 400  # not an object
    got = http.get("/v1/collections/upd").json()  # nothing of the refused patches was applied
    assert (got["search_mode"], got["grounding"], got["reader_threshold"], got["min_similarity"]) == (
        "hybrid",
        None,
        None,
        None,
    )
    r = http.patch("/v1/collections/nope", json={"reader_threshold": 1.0})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert http.delete("/v1/collections/upd").status_code == 200


def test_patch_is_an_admin_action_on_its_collection(http_server, http):
    from service.http.auth import allow_all

    asked = []
    ctx = http_server.server.http.ctx
    ctx.authorize = lambda key, action, collection: asked.append((action, collection))
    try:
        assert http.patch("/v1/collections/nope", json={"reader_threshold": 1.0}).status_code == 404
    finally:
        ctx.authorize = allow_all
    assert asked == [("admin", "nope")]
