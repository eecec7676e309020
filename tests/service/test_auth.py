"""API keys: the key file holds salted hashes only, roles nest, scopes narrow, revocation and expiry take effect, a
running process sees the file change within RELOAD_INTERVAL_S; and `pqrag keys` prints a key once, on its last line."""

from __future__ import annotations

import json
import os
import re
import stat
import time

import pytest

from common.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from service import auth
from service.auth import ANONYMOUS, KeyStore, Role, bearer_token, parse_duration
from service.cli import main

KEY_RE = re.compile(r"^pqrag_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$")


def test_no_key_file_means_auth_is_off(tmp_path):
    keys = KeyStore(tmp_path)
    assert not keys.enabled
    assert keys.authenticate(None) is ANONYMOUS and keys.authenticate("anything") is ANONYMOUS
    assert not (tmp_path / auth.KEYS_FILE).exists()


def test_keys_are_random_stored_hashed_and_authenticate(tmp_path):
    keys = KeyStore(tmp_path)
    record, key = keys.create(Role.WRITE, collections=["docs", "notes"], name="bot")
    other_record, other = keys.create(Role.READ)
    assert KEY_RE.match(key) and KEY_RE.match(other) and key != other
    assert other_record.name.startswith("key-")
    text = (tmp_path / auth.KEYS_FILE).read_text()
    secret = key.split("_", 2)[2]  # pqrag_<id>_<secret>: the secret is urlsafe base64 and may hold "_" itself
    assert secret not in text and key not in text  # only the salted hash
    assert stat.S_IMODE(os.stat(tmp_path / auth.KEYS_FILE).st_mode) == 0o600
    stored = json.loads(text)["keys"][0]
    assert len(stored["salt"]) == 32 and len(stored["hash"]) == 64

    assert keys.enabled
    p = keys.authenticate(key)
    assert (p.name, p.role, p.collections) == ("bot", Role.WRITE, frozenset({"docs", "notes"}))
    assert keys.authenticate(other).role is Role.READ
    for bad in (
        None,
        "",
        "Bearer " + key,
        key[:-1] + ("A" if key[-1] != "A" else "B"),
        "pqrag_000000000000_" + "x" * 43,
    ):
        with pytest.raises(UnauthenticatedError):
            keys.authenticate(bad)


def test_roles_nest_and_scopes_narrow(tmp_path):
    keys = KeyStore(tmp_path)
    _, key = keys.create(Role.WRITE, collections=["docs"])
    p = keys.authenticate(key)
    p.require(Role.READ, "docs")
    p.require(Role.WRITE, "docs")
    with pytest.raises(PermissionDeniedError, match="admin role"):
        p.require(Role.ADMIN, "docs")
    with pytest.raises(PermissionDeniedError, match="may not use collection"):
        p.require(Role.READ, "other")
    assert p.may_access("docs") and not p.may_access("other")
    ANONYMOUS.require(Role.ADMIN, "anything")


def test_revocation_and_expiry(tmp_path, monkeypatch):
    keys = KeyStore(tmp_path)
    _, key = keys.create(Role.READ, name="short", expires_s=60)
    _, kept = keys.create(Role.READ, name="kept")
    assert keys.authenticate(key).name == "short"

    server_view = KeyStore(tmp_path)  # another process: it re-reads the file within RELOAD_INTERVAL_S
    assert server_view.authenticate(key).name == "short"
    keys.revoke("short")
    time.sleep(auth.RELOAD_INTERVAL_S + 0.1)
    with pytest.raises(UnauthenticatedError):
        server_view.authenticate(key)
    assert server_view.authenticate(kept).name == "kept"
    with pytest.raises(NotFoundError):
        keys.revoke("short")  # already revoked
    # A revoked name may be reused; the old key stays dead.
    _, again = keys.create(Role.READ, name="short")
    assert keys.authenticate(again).name == "short"
    with pytest.raises(UnauthenticatedError):
        keys.authenticate(key)
    with pytest.raises(AlreadyExistsError):
        keys.create(Role.READ, name="short")

    _, expiring = keys.create(Role.READ, name="soon", expires_s=30)
    real = time.time
    monkeypatch.setattr(auth.time, "time", lambda: real() + 31)
    with pytest.raises(UnauthenticatedError):
        keys.authenticate(expiring)


def test_revoking_every_key_never_opens_the_server(tmp_path):
    keys = KeyStore(tmp_path)
    _, key = keys.create(Role.ADMIN, name="only")
    keys.revoke("only")
    assert keys.enabled
    with pytest.raises(UnauthenticatedError):
        keys.authenticate(None)


def test_last_used_is_written_by_the_server_not_the_key_file(tmp_path):
    keys = KeyStore(tmp_path)
    _, key = keys.create(Role.READ, name="r")
    before = (tmp_path / auth.KEYS_FILE).read_bytes()
    keys.authenticate(key)
    keys.flush_usage()
    assert keys.last_used()["r"] > 0
    assert (tmp_path / auth.KEYS_FILE).read_bytes() == before


def test_helpers():
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token(None) is None and bearer_token("Bearer") is None
    assert parse_duration("30d") == 30 * 86400 and parse_duration("90m") == 5400 and parse_duration("1.5h") == 5400
    with pytest.raises(InvalidArgumentError):
        parse_duration("soon")
    with pytest.raises(InvalidArgumentError):
        Role.parse("root")


def test_keys_cli_prints_the_key_once_and_lists_no_secret(tmp_path, capsys):
    data = str(tmp_path / "data")
    assert main(["keys", "create", "--data-dir", data, "--role", "write", "--collections", "a,b", "--name", "w"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    key = out[-1]
    assert KEY_RE.match(key) and all(key not in line for line in out[:-1])
    assert KeyStore(data).authenticate(key).collections == frozenset({"a", "b"})

    assert main(["keys", "list", "--data-dir", data, "--json"]) == 0
    listing = capsys.readouterr().out
    rows = json.loads(listing)
    assert [(r["name"], r["role"], r["collections"], r["state"]) for r in rows] == [
        ("w", "write", ["a", "b"], "active")
    ]
    assert key.split("_", 2)[2] not in listing
    assert main(["keys", "list", "--data-dir", data]) == 0
    assert "w" in capsys.readouterr().out

    assert main(["keys", "revoke", "w", "--data-dir", data]) == 0
    assert main(["keys", "revoke", "w", "--data-dir", data]) == 1
    assert "no active key" in capsys.readouterr().err
    audit = [json.loads(line) for line in (tmp_path / "data" / "audit.log").read_text().splitlines()]
    assert [a["method"] for a in audit] == ["keys.create", "keys.revoke"]
    assert all(key not in json.dumps(a) for a in audit)

    assert main(["keys", "generate"]) == 0
    assert KEY_RE.match(capsys.readouterr().out.strip())
    assert main(["keys", "create", "--data-dir", data, "--role", "read", "--expires", "tomorrow"]) == 1
