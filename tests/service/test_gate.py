"""Safe defaults at startup (loopback by default; a non-loopback address needs a key or --insecure), the admin key
from a secret file, and the gate's check as the HTTP front door uses it."""

from __future__ import annotations

import logging

import pytest

from common.errors import PermissionDeniedError, TooManyRequestsError, UnauthenticatedError
from service.auth import KeyStore, Role, generate_key
from service.cli import main
from service.config import ServerConfig
from service.gate import Gate, UnsafeConfigError, check_exposure, is_loopback
from service.metrics import ServerMetrics
from tests.service.conftest import ServerThread


def test_loopback_detection():
    assert ServerConfig().host == "127.0.0.1"
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.1.2.3", "example.com"):
        assert not is_loopback(host), host


def test_a_non_loopback_address_without_a_key_is_refused_unless_insecure(tmp_path, caplog):
    config = ServerConfig(data_dir=str(tmp_path), host="0.0.0.0")
    with pytest.raises(UnsafeConfigError, match="pqrag keys create --data-dir"):
        check_exposure(config, KeyStore(tmp_path))
    with pytest.raises(UnsafeConfigError):  # /metrics on the network counts too
        check_exposure(
            ServerConfig(data_dir=str(tmp_path), metrics_port=9464, metrics_host="0.0.0.0"), KeyStore(tmp_path)
        )
    assert ServerConfig().metrics_host == "127.0.0.1"
    with caplog.at_level(logging.WARNING, logger="pqrag.server"):
        check_exposure(ServerConfig(data_dir=str(tmp_path), host="0.0.0.0", insecure=True), KeyStore(tmp_path))
    assert "INSECURE" in caplog.text
    check_exposure(ServerConfig(data_dir=str(tmp_path)), KeyStore(tmp_path))  # loopback: fine without keys
    KeyStore(tmp_path).create(Role.ADMIN)
    check_exposure(config, KeyStore(tmp_path))  # a key: fine


def test_serve_refuses_with_a_message_and_exit_status_2(tmp_path, capsys):
    args = ["serve", "--data-dir", str(tmp_path), "--host", "0.0.0.0", "--port", "0", "--no-generator"]
    assert main([*args, "--reader", "none"]) == 2  # no reader: the refusal comes after the models load
    err = capsys.readouterr().err
    assert "refusing to serve 0.0.0.0" in err and "--insecure" in err


def test_a_server_on_all_interfaces_with_a_key(tmp_path):
    _, key = KeyStore(tmp_path / "data").create(Role.READ)
    srv = ServerThread(tmp_path / "data", host="0.0.0.0").start()
    try:
        with srv.client(api_key=key) as c:
            assert c.list_collections() == []
    finally:
        srv.stop()


def test_the_admin_key_file_registers_a_bootstrap_key(tmp_path):
    secret = tmp_path / "admin.key"
    secret.write_text(generate_key() + "\n")
    srv = ServerThread(tmp_path / "data", host="0.0.0.0", admin_key_file=str(secret)).start()
    try:
        with srv.client(api_key=secret.read_text().strip()) as c:
            assert c.list_collections() == []
    finally:
        srv.stop()
    keys = KeyStore(tmp_path / "data")
    assert [(r.name, r.role, r.state(0)) for r in keys.records()] == [("bootstrap", "admin", "active")]
    secret.write_text(generate_key())  # a rotated secret replaces the bootstrap key
    ServerThread(tmp_path / "data", admin_key_file=str(secret)).start().stop()
    assert [(r.name, r.revoked is None) for r in keys.records()] == [("bootstrap", False), ("bootstrap", True)]
    secret.write_text("not a key")
    with pytest.raises(UnsafeConfigError, match="pqrag keys generate"):
        ServerThread(tmp_path / "data", admin_key_file=str(secret)).start()


def test_http_authorizer_maps_actions_to_roles_and_rate_limits(tmp_path):
    keys = KeyStore(tmp_path)
    _, reader = keys.create(Role.READ, collections=["docs"], name="r")
    gate = Gate.for_config(ServerConfig(data_dir=str(tmp_path), rate_limit_rps=2), ServerMetrics())
    try:
        gate.http_authorizer(reader, "generate", "docs")
        with pytest.raises(PermissionDeniedError):
            gate.http_authorizer(reader, "write", "docs")
        with pytest.raises(PermissionDeniedError):
            gate.http_authorizer(reader, "read", "other")
        with pytest.raises(UnauthenticatedError):
            gate.http_authorizer(None, "read", None)
        with pytest.raises(TooManyRequestsError, match="requests per second"):
            for _ in range(5):
                gate.http_authorizer(reader, "read", None)
    finally:
        gate.close()
