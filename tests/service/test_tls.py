"""TLS and mutual TLS for the server and its clients (the Python client and the CLI), with a CA made at run time;
and /metrics over the same certificate."""

from __future__ import annotations

import ssl
import urllib.request

import grpc
import pytest

from common.errors import InvalidArgumentError
from service.cli import main
from service.client import Client
from service.tls import ServerTLS, client_credentials
from tests.service.certs import make_pki
from tests.service.conftest import ServerThread


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_server(tmp_path, pki, mutual: bool, **config) -> ServerThread:
    return ServerThread(
        tmp_path / "data",
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca) if mutual else None,
        **config,
    ).start()


def unavailable(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as e:
        client.health()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_server_and_clients(tmp_path, pki, capsys):
    srv = tls_server(tmp_path, pki, mutual=False, metrics_port=0)
    try:
        with Client(srv.target, tls_ca=str(pki.ca), timeout=120) as c:
            assert c.health() == "SERVING"
            c.create_collection("kb")
            assert c.get_collection("kb").name == "kb"
        with Client(f"localhost:{srv.port}", tls_ca=str(pki.ca), timeout=10) as c:
            assert c.health() == "SERVING"
        with Client(srv.target, timeout=5) as c:  # plaintext to a TLS port
            unavailable(c)
        with Client(srv.target, tls_ca=str(pki.other_ca), timeout=5) as c:  # a CA that did not sign the server
            unavailable(c)
        assert main(["health", "--server", srv.target, "--tls-ca", str(pki.ca), "--timeout", "10"]) == 0
        assert capsys.readouterr().out.strip() == "SERVING"

        ctx = ssl.create_default_context(cafile=str(pki.ca))
        with urllib.request.urlopen(f"https://127.0.0.1:{srv.server.metrics_port}/metrics", context=ctx) as r:
            assert b"pqrag_rpc_requests_total" in r.read()
    finally:
        srv.stop()


def test_mutual_tls_requires_a_client_certificate(tmp_path, pki, monkeypatch, capsys):
    srv = tls_server(tmp_path, pki, mutual=True)
    try:
        mine = {"tls_ca": str(pki.ca), "tls_cert": str(pki.client_cert), "tls_key": str(pki.client_key)}
        with Client(srv.target, timeout=10, **mine) as c:
            assert c.health() == "SERVING"
        with Client(srv.target, tls_ca=str(pki.ca), timeout=5) as c:  # no client certificate
            unavailable(c)
        # The CLI from the environment: $PQRAG_TLS_CA / _CERT / _KEY.
        monkeypatch.setenv("PQRAG_TLS_CA", str(pki.ca))
        monkeypatch.setenv("PQRAG_TLS_CERT", str(pki.client_cert))
        monkeypatch.setenv("PQRAG_TLS_KEY", str(pki.client_key))
        assert main(["health", "--server", srv.target, "--timeout", "10"]) == 0
        assert capsys.readouterr().out.strip() == "SERVING"
    finally:
        srv.stop()


def test_tls_files_are_checked(tmp_path, pki):
    with pytest.raises(InvalidArgumentError, match="not PEM"):
        (tmp_path / "x.pem").write_text("hello")
        ServerTLS(str(tmp_path / "x.pem"), str(pki.server_key)).grpc_credentials()
    with pytest.raises(InvalidArgumentError, match="cannot read"):
        ServerTLS(str(tmp_path / "missing.pem"), str(pki.server_key)).grpc_credentials()
    with pytest.raises(InvalidArgumentError, match="needs its key"):
        client_credentials(str(pki.ca), cert=str(pki.client_cert))
    ctx = ServerTLS(str(pki.server_cert), str(pki.server_key), str(pki.ca)).ssl_context()  # the HTTP door's
    assert ctx.verify_mode == ssl.CERT_REQUIRED
