"""/metrics scraped over HTTP from a live server: every documented name is there with its documented type (counters
as counters, histograms as histograms), and the README's Metrics section names each one."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import RAG_DOCS, ServerThread

README = Path(__file__).resolve().parents[2] / "README.md"

# name (as exposed: a counter's family name is without _total) -> type
DOCUMENTED = {
    "pqrag_rpc_requests": "counter",
    "pqrag_rpc_latency_seconds": "histogram",
    "pqrag_ingested_documents": "counter",
    "pqrag_ingested_chunks": "counter",
    "pqrag_search_embed_seconds": "histogram",
    "pqrag_search_index_seconds": "histogram",
    "pqrag_rag_retrieval_seconds": "histogram",
    "pqrag_rag_time_to_first_token_seconds": "histogram",
    "pqrag_rag_total_seconds": "histogram",
    "pqrag_generated_tokens": "counter",
    "pqrag_rag_answers": "counter",
    "pqrag_serving": "gauge",
    "pqrag_waiting_requests": "gauge",
    "pqrag_waiting_tokens": "gauge",
    "pqrag_engine_num_running": "gauge",
    "pqrag_engine_num_waiting": "gauge",
    "pqrag_engine_kv_usage": "gauge",
    "pqrag_engine_prefix_cache_hit_rate": "gauge",
    "pqrag_engine_num_preemptions": "gauge",
    "pqrag_engine_spec_acceptance_rate": "gauge",  # speculative decoding (0 while off)
    "pqrag_engine_spec_mean_acceptance_length": "gauge",
}


def test_metrics_endpoint_serves_the_documented_names_and_types(tmp_path, tiny_model_dir):
    from service.config import BUNDLED_READER

    srv = ServerThread(tmp_path / "data", model=str(tiny_model_dir), metrics_port=0, reader=BUNDLED_READER).start()
    try:
        with srv.client(timeout=120) as c:
            c.create_collection("kb")
            list(c.ingest("kb", RAG_DOCS))
            c.search("kb", "bread")
            with pytest.raises(grpc.RpcError):
                c.search("kb", "")
            c.ask("kb", "What makes bread rise?", max_tokens=4, ignore_eos=True, grounding="free")
            c.create_collection("strict", reader_threshold=100.0)  # the reader declines every question here
            list(c.ingest("strict", RAG_DOCS))
            c.ask("strict", "What makes bread rise?", grounding="extract")
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.server.metrics_port}/metrics", timeout=10) as r:
            assert r.headers.get_content_type() == "text/plain"
            text = r.read().decode()
    finally:
        srv.stop()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in DOCUMENTED.items():
        assert name in families, f"{name} is documented but not exported"
        assert families[name].type == kind, f"{name} is a {families[name].type}, documented as a {kind}"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("pqrag_rpc_requests_total", (("code", "OK"), ("method", "Search")))] == 1
    assert samples[("pqrag_rpc_requests_total", (("code", "INVALID_ARGUMENT"), ("method", "Search")))] == 1
    assert samples[("pqrag_ingested_documents_total", (("collection", "kb"),))] == len(RAG_DOCS)
    assert samples[("pqrag_generated_tokens_total", ())] == 4
    assert samples[("pqrag_rag_total_seconds_count", ())] == 2
    answers = {k[1]: v for k, v in samples.items() if k[0] == "pqrag_rag_answers_total"}
    assert answers == {
        (("grounding", "free"), ("outcome", "answered")): 1,
        (("grounding", "extract"), ("outcome", "declined")): 1,
    }
    assert samples[("pqrag_serving", ())] == 1 and samples[("pqrag_waiting_requests", ())] == 0

    documented = README.read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    for name in DOCUMENTED:
        shown = name + ("_total" if DOCUMENTED[name] == "counter" else "")
        assert shown in documented or name.replace("pqrag_engine_", "_") in documented, f"README misses {shown}"
