"""A real pqrag server with its HTTP front door on a free port (the gRPC server's own loop and thread), the tiny
random-weight generator and a collection "kb" of RAG_DOCS: one for the whole package (tests that change state use
collections of their own)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.service.conftest import RAG_DOCS, ServerThread
from tests.service.servicers.test_rag import engine_stats, wait_for

__all__ = ["base_url", "engine_stats", "start_http_server", "wait_for"]


def start_http_server(data_dir, **config) -> ServerThread:
    return ServerThread(data_dir, http_port=0, **config).start()


def base_url(srv: ServerThread) -> str:
    return srv.server.http.url


@pytest.fixture(scope="package")
def http_server(tmp_path_factory, tiny_model_dir):
    srv = start_http_server(tmp_path_factory.mktemp("http") / "data", model=str(tiny_model_dir))
    with httpx.Client(base_url=base_url(srv), timeout=120) as h:
        assert h.post("/v1/collections", json={"name": "kb"}).status_code == 201
        assert h.post("/v1/collections/kb/documents", json={"documents": RAG_DOCS}).status_code == 200
    yield srv
    srv.stop()


@pytest.fixture
def http(http_server):
    with httpx.Client(base_url=base_url(http_server), timeout=120) as h:
        yield h


@pytest.fixture
def oai(http_server):
    with openai.OpenAI(base_url=base_url(http_server) + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture
def model(http_server) -> str:
    return http_server.server.http.ctx.served_model_name
