"""The HTTP server beside the gRPC one: one process, one set of collections, one generator; it binds at build time
(a taken port fails the start), stops with the gRPC server (in-flight streams end), and `pqrag serve` turns it on."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import time

import httpx
import pytest

from service.server import ServerConfig, create_server
from tests.service.conftest import DOCS, make_tiny_model
from tests.service.http.conftest import base_url, start_http_server


def test_grpc_and_http_share_the_collections_and_the_generator(http_server, http):
    with http_server.client(timeout=60) as c:
        c.create_collection("shared")
        list(c.ingest("shared", DOCS[:2]))
    assert http.get("/v1/collections/shared").json()["document_count"] == 2
    http.post("/v1/collections/shared/documents", json={"documents": DOCS[2:]})
    with http_server.client(timeout=60) as c:
        assert c.get_collection("shared").document_count == 4
        c.delete_collection("shared")
    ctx = http_server.server.http.ctx
    assert ctx.collections is http_server.server.collections and ctx.generator is http_server.server.generator


def test_a_taken_http_port_fails_the_build(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            # no reader: ServerConfig's default loads the bundled one, a second for nothing here
            asyncio.run(create_server(ServerConfig(data_dir=str(tmp_path / "d"), port=0, http_port=port, reader=None)))
    # the data directory was released: a new server opens it
    srv = start_http_server(tmp_path / "d")
    srv.stop()


def test_stopping_the_server_ends_streams_in_flight(tmp_path):
    # a window long enough that no CPU finishes the request within the 1 s grace (400 tokens of the 512-token tiny
    # model did, in bf16 on a CPU with avx512_bf16)
    model = make_tiny_model(tmp_path / "model", max_position_embeddings=16384)
    srv = start_http_server(tmp_path / "data", model=str(model))
    request = {"prompt": "x", "max_tokens": 16000, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=base_url(srv), timeout=60) as h, h.stream("POST", "/v1/completions", json=request) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        start = time.monotonic()
        srv.stop()  # grace 1 s, then the stream is cut
        rest = list(_until_closed(lines))
    assert time.monotonic() - start < 30
    assert "data: [DONE]" not in rest or any('"finish_reason":"abort"' in line for line in rest)


def _until_closed(lines):
    try:
        yield from lines
    except httpx.HTTPError:  # the server closed the connection mid-stream
        return


@pytest.fixture
def self_signed(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_http_serves_tls_with_the_servers_certificate(tmp_path, self_signed):
    cert, key = self_signed
    srv = start_http_server(tmp_path / "data", tls_cert=str(cert), tls_key=str(key))
    try:
        url = base_url(srv)
        assert url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(cert))
        assert httpx.get(url + "/health", verify=trust, timeout=30).json()["status"] == "serving"
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the TLS port
            httpx.get(url.replace("https://", "http://") + "/health", timeout=30)
    finally:
        srv.stop()
