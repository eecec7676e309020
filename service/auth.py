"""API keys with roles and collection scopes: who a request comes from and what it may do, for both front doors.

    keys = KeyStore("data")                                   # data/keys.json: salted hashes, never a key
    record, key = keys.create(Role.WRITE, collections=["docs"], name="ingest-bot", expires_s=30 * 86400)
    print(key)                                                # shown once: pqrag_<id>_<secret>
    principal = keys.authenticate(bearer_token("Bearer " + key))   # UnauthenticatedError when unknown/expired/revoked
    principal.require(Role.WRITE, collection="docs")          # PermissionDeniedError when the role or scope is short

Roles nest: read (Search, Get/List, Ask/Chat, embeddings) < write (+ Ingest, DeleteDocument) < admin (+ collections
and keys). A key may be scoped to some collections: it sees and touches only those. Auth is enforced as soon as the
data dir holds a key file (the first `pqrag keys create` makes it; revoking every key leaves a server nobody can
use, never an open one); without one every caller is ANONYMOUS (admin, every collection).

A key is `pqrag_` + a 12-hex-digit public id + `_` + 256 random bits (base64url). The file keeps, per key, a random
salt and SHA-256(salt + secret), compared with hmac.compare_digest (constant time); a fast hash suffices for
secrets of 256 random bits (a slow KDF is for passwords people choose). The server re-reads the file when it
changes (checked at most every RELOAD_INTERVAL_S), so `pqrag keys revoke` takes effect within about a second; it
writes "last used" times to a file of its own (keys-usage.json), so the CLI and the server never write one file.

The gRPC interceptor (service.interceptors) and the HTTP routes both call `KeyStore.authenticate` and
`Principal.require`; the principal of the call in progress is `current_principal()`.
"""

from __future__ import annotations

import contextvars
import enum
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    quote,
)
from common.fs import atomic_write

KEY_PREFIX = "pqrag_"
KEYS_FILE = "keys.json"
USAGE_FILE = "keys-usage.json"
LOCK_FILE = "keys.lock"
RELOAD_INTERVAL_S = 1.0  # how stale the server's copy of the key file may be (revocation delay)
USAGE_FLUSH_S = 30.0  # how often "last used" times are written
KEY_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_KEY_RE = re.compile(r"^pqrag_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")

__all__ = [
    "ANONYMOUS",
    "KeyRecord",
    "KeyStore",
    "Principal",
    "Role",
    "bearer_token",
    "current_principal",
    "parse_duration",
]


class Role(enum.IntEnum):
    READ = 1  # Search, GetDocument, Get/ListCollections, Ask, Chat, embeddings
    WRITE = 2  # + Ingest, IngestStream, DeleteDocument
    ADMIN = 3  # + Create/Update/DeleteCollection, keys

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            raise InvalidArgumentError(f"role must be read, write or admin, got {quote(name)}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: a key's name, role and collection scope (None: every collection), and its rate
    limits (None: the server's defaults)."""

    name: str
    role: Role
    collections: frozenset[str] | None = None
    requests_per_s: float | None = None
    tokens_per_s: float | None = None

    def may_access(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    def require(self, role: Role, collection: str | None = None, what: str = "this call") -> None:
        """PermissionDeniedError unless this principal has `role` (or a higher one) and may touch `collection`."""
        if self.role < role:
            raise PermissionDeniedError(
                f"{what} needs a key with the {role.label} role; key {self.name!r} has {self.role.label}"
            )
        if collection is not None and not self.may_access(collection):
            raise PermissionDeniedError(f"key {self.name!r} may not use collection {quote(collection)}")


ANONYMOUS = Principal("anonymous", Role.ADMIN)  # no key file: auth is off (a loopback server, or --insecure)
_CURRENT: contextvars.ContextVar[Principal] = contextvars.ContextVar("pqrag_principal", default=ANONYMOUS)


def current_principal() -> Principal:
    """The principal of the call in progress (the interceptor sets it for the call's task)."""
    return _CURRENT.get()


def set_current_principal(principal: Principal) -> contextvars.Token:
    return _CURRENT.set(principal)


def bearer_token(value: str | None) -> str | None:
    """The key in an `authorization: Bearer KEY` header value; None when there is none (or another scheme)."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def parse_duration(text: str) -> float:
    """Seconds in "90s", "30m", "12h", "30d" or "2w"."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text or "")
    if not m:
        raise InvalidArgumentError(f"a duration is a number and a unit (s, m, h, d, w), e.g. 30d; got {quote(text)}")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


@dataclass
class KeyRecord:
    """One key as the key file holds it: never the key itself."""

    name: str
    key_id: str  # the public part of the key (pqrag_<key_id>_...), for lookup
    role: str
    salt: str  # hex, 16 random bytes
    hash: str  # hex SHA-256(salt + secret)
    created: float
    collections: list[str] | None = None  # None: every collection
    expires: float | None = None
    revoked: float | None = None
    requests_per_s: float | None = None
    tokens_per_s: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KeyRecord:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})

    def state(self, now: float) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"

    def principal(self) -> Principal:
        scope = frozenset(self.collections) if self.collections is not None else None
        return Principal(self.name, Role.parse(self.role), scope, self.requests_per_s, self.tokens_per_s)


@dataclass
class _Loaded:
    stamp: tuple[int, int, int] | None  # (inode, size, mtime_ns) of the key file; None: there is none
    by_id: dict[str, KeyRecord] = field(default_factory=dict)
    checked: float = 0.0  # monotonic time of the last stat


class KeyStore:
    """The keys of one data directory (module docstring). Thread-safe; several processes may use one data dir (the
    server reads, the CLI writes under an flock)."""

    def __init__(self, data_dir: str | os.PathLike):
        self.dir = Path(data_dir)
        self.path = self.dir / KEYS_FILE
        self._lock = threading.Lock()
        self._loaded = _Loaded(stamp=None, checked=-1e9)
        self._used: dict[str, float] = {}  # name -> last use, not yet written
        self._used_flushed = time.monotonic()

    # --- reading ------------------------------------------------------------------------------------------------

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> list[KeyRecord]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        return [KeyRecord.from_dict(d) for d in data.get("keys", [])]

    def _current(self) -> _Loaded:
        """The key file as of at most RELOAD_INTERVAL_S ago (re-read when its inode, size or mtime changed)."""
        now = time.monotonic()
        with self._lock:
            loaded = self._loaded
            if now - loaded.checked < RELOAD_INTERVAL_S:
                return loaded
            stamp = self._stamp()
            if stamp != loaded.stamp:
                loaded = _Loaded(stamp, {r.key_id: r for r in self._read()} if stamp else {})
            loaded.checked = now
            self._loaded = loaded
            return loaded

    @property
    def enabled(self) -> bool:
        """Auth is enforced: the data dir holds a key file."""
        return self._current().stamp is not None

    def records(self) -> list[KeyRecord]:
        return sorted(self._read(), key=lambda r: r.created)

    def authenticate(self, key: str | None) -> Principal:
        """The principal of a presented key (ANONYMOUS while auth is off); UnauthenticatedError otherwise. The
        message never says which part was wrong beyond "missing" vs "not valid"."""
        loaded = self._current()
        if loaded.stamp is None:
            return ANONYMOUS
        if not key:
            raise UnauthenticatedError(
                "this server requires an API key: send `authorization: Bearer KEY` (pqrag CLI: --api-key or "
                "$PQRAG_API_KEY); an admin creates keys with `pqrag keys create`"
            )
        m = _KEY_RE.match(key)
        record = loaded.by_id.get(m.group(1)) if m else None
        # Compare even when the id is unknown, so the time taken does not tell which ids exist.
        salt, expected = (record.salt, record.hash) if record else ("00" * 16, "0" * 64)
        ok = hmac.compare_digest(_digest(salt, m.group(2) if m else key), expected) and record is not None
        if not ok or record.state(time.time()) != "active":
            raise UnauthenticatedError("the API key is not valid (unknown, expired or revoked)")
        self._note_use(record.name)
        return record.principal()

    # --- last use -----------------------------------------------------------------------------------------------

    def _note_use(self, name: str) -> None:
        now = time.time()
        with self._lock:
            self._used[name] = now
            due = time.monotonic() - self._used_flushed > USAGE_FLUSH_S
        if due:
            self.flush_usage()

    def flush_usage(self) -> None:
        """Write the pending "last used" times (the server calls this now and then, and at shutdown)."""
        with self._lock:
            pending, self._used = self._used, {}
            self._used_flushed = time.monotonic()
        if not pending:
            return
        usage = {**self.last_used(), **pending}
        with atomic_write(self.dir / USAGE_FILE, "w") as f:
            json.dump(usage, f)

    def last_used(self) -> dict[str, float]:
        try:
            return json.loads((self.dir / USAGE_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return {}

    # --- writing (the CLI) --------------------------------------------------------------------------------------

    @contextmanager
    def _edit(self) -> Iterator[list[KeyRecord]]:
        """Read-modify-write the key file under an exclusive flock; written atomically, mode 0600."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / LOCK_FILE, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = self._read()
            yield records
            with atomic_write(self.path, "w") as f:
                json.dump({"version": 1, "keys": [asdict(r) for r in records]}, f, indent=1)
            os.chmod(self.path, 0o600)
        with self._lock:
            self._loaded = _Loaded(stamp=None, checked=-1e9)  # this process sees its own change at once

    def create(
        self,
        role: Role,
        collections: Iterable[str] | None = None,
        name: str | None = None,
        expires_s: float | None = None,
        requests_per_s: float | None = None,
        tokens_per_s: float | None = None,
        key: str | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key (or `key`, one made by generate_key, e.g. from a secret file); returns its record and the key,
        which is stored nowhere: show it once."""
        if key is None:
            key = generate_key()
        m = _KEY_RE.match(key)
        if not m:
            raise InvalidArgumentError("a key must look like pqrag_<12 hex digits>_<43 base64url characters>")
        key_id, secret = m.groups()
        name = name or f"key-{key_id}"
        if not KEY_NAME_RE.match(name):
            raise InvalidArgumentError(f"key name {quote(name)}: use 1 to 64 letters, digits, '_', '.' or '-'")
        scope = sorted(set(collections)) if collections is not None else None
        for rate, label in ((requests_per_s, "requests per second"), (tokens_per_s, "tokens per second")):
            if rate is not None and not 0 < rate < float("inf"):
                raise InvalidArgumentError(f"{label} must be a positive number, got {rate!r}")
        salt = secrets.token_hex(16)
        now = time.time()
        record = KeyRecord(
            name=name,
            key_id=key_id,
            role=Role(role).label,
            salt=salt,
            hash=_digest(salt, secret),
            created=now,
            collections=scope,
            expires=now + expires_s if expires_s is not None else None,
            requests_per_s=requests_per_s,
            tokens_per_s=tokens_per_s,
        )
        with self._edit() as records:
            if any(r.name == name and r.revoked is None for r in records):
                raise AlreadyExistsError(f"a key named {name!r} exists; revoke it first or choose another name")
            if any(r.key_id == key_id for r in records):
                raise AlreadyExistsError("this key is already registered")
            records.append(record)
        return record, key

    def revoke(self, name: str) -> KeyRecord:
        """Mark the active key called `name` revoked (kept in the file, so the data dir still holds keys)."""
        with self._edit() as records:
            live = [r for r in records if r.name == name and r.revoked is None]
            if not live:
                raise NotFoundError(f"no active key named {quote(name)}")
            live[0].revoked = time.time()
        return live[0]

    def find(self, key: str) -> KeyRecord | None:
        """The record of a key (active or not), by its id and secret; None when it is not registered."""
        m = _KEY_RE.match(key)
        if not m:
            return None
        for r in self._read():
            if r.key_id == m.group(1) and hmac.compare_digest(_digest(r.salt, m.group(2)), r.hash):
                return r
        return None


def generate_key() -> str:
    """A fresh key: `pqrag_` + 48-bit public id + `_` + 256 random bits."""
    return f"{KEY_PREFIX}{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
