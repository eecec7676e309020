"""/health (the engine's and the store's state; 503 when not serving), /metrics (the server's one Prometheus
registry: RPCs and HTTP requests side by side), /openapi.json, and the console's page and static files."""

from __future__ import annotations

import httpx

from tests.service.http.conftest import base_url, start_http_server


def test_health_reports_engine_and_store(http, http_server):
    r = http.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "serving" and body["store"] == {
        "state": "open",
        "collections": body["store"]["collections"],
    }
    assert body["engine"]["state"] == "running" and body["engine"]["num_blocks"] > 0
    assert body["engine"]["model"] == http_server.server.http.ctx.served_model_name


def test_metrics_share_the_registry_with_grpc(http, http_server):
    with http_server.client(timeout=60) as c:
        c.list_collections()  # one RPC
    http.get("/v1/collections")
    text = http.get("/metrics").text
    assert 'pqrag_rpc_requests_total{code="OK",method="ListCollections"}' in text
    assert 'pqrag_http_requests_total{route="/v1/collections",status="200"}' in text
    assert "pqrag_engine_num_free_blocks" in text  # the engine's gauges


def test_openapi_schema_lists_the_routes(http):
    paths = http.get("/openapi.json").json()["paths"]
    for p in (
        "/v1/models",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/collections",
        "/v1/collections/{collection}/documents",
        "/v1/collections/{collection}/search",
        "/health",
    ):
        assert p in paths, p
    upload = paths["/v1/collections/{collection}/documents"]["post"]["requestBody"]["content"]
    assert set(upload) == {"application/json", "multipart/form-data"}


def test_console_page_and_its_files_are_served_by_pqrag(http):
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "/console/console.js" in html and "/console/console.css" in html
    assert "http://" not in html and "https://" not in html  # nothing from a CDN
    for name in ("console.js", "console.css"):
        r = http.get(f"/console/{name}")
        assert r.status_code == 200 and len(r.text) > 100
        assert "https://" not in r.text


def test_a_retrieval_only_server_is_healthy_and_answers_503_to_generation(tmp_path):
    srv = start_http_server(tmp_path / "data")
    try:
        with httpx.Client(base_url=base_url(srv), timeout=60) as h:
            health = h.get("/health").json()
            assert health["status"] == "serving" and health["engine"] == {"state": "absent"}
            r = h.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 503 and "--no-generator" in r.json()["error"]["message"]
            assert h.get("/v1/models").json()["data"] == []  # no generator, no collection: nothing to serve
    finally:
        srv.stop()
    assert srv.server.http.ctx.draining  # stopped: /health would answer 503 now
