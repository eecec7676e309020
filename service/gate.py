"""The server's gate: what every request passes before the domain, whichever front door it came through.

    gate = Gate.for_config(config, metrics)        # keys, rate limits, admission, audit log, the gRPC interceptor
    principal = gate.authorize(key, Role.WRITE, collection="docs")   # HTTP: UnauthenticatedError / PermissionDenied
    gate.limits.admit(principal)                   # ResourceExhaustedError over the key's rate
    with gate.admission.ticket() as ticket: ...    # answers: --max-waiting-requests/-tokens (service.admission)
    gate.audit.record(key=principal.name, method="DeleteDocument", collection="docs", ids=["a"], outcome="OK")

check_exposure() is the safe default at startup: a server that listens beyond the loopback interface with no key
in its data dir refuses to start (unless --insecure, which it then warns about).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from common.errors import InvalidArgumentError
from service.admission import Admission
from service.audit import AuditLog, append_audit
from service.auth import KeyStore, Principal, Role, set_current_principal
from service.config import ServerConfig
from service.interceptors import HEALTH_SERVICE, REFLECTION_SERVICE, CallGuard
from service.metrics import ServerMetrics
from service.ratelimit import RateLimits

log = logging.getLogger("pqrag.server")


class UnsafeConfigError(RuntimeError):
    """A configuration the server refuses to start with (the message says how to fix it)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


@dataclass
class Gate:
    keys: KeyStore
    limits: RateLimits
    admission: Admission
    audit: AuditLog
    interceptor: CallGuard

    @classmethod
    def for_config(cls, config: ServerConfig, metrics: ServerMetrics) -> Gate:
        keys = KeyStore(config.data_dir)
        if config.admin_key_file:
            bootstrap_admin_key(keys, config.admin_key_file)
        check_exposure(config, keys)
        limits = RateLimits(config.rate_limit_rps, config.rate_limit_tps)
        admission = Admission(config.max_waiting_requests, config.max_waiting_tokens)
        audit = AuditLog(config.data_dir)
        open_services = (HEALTH_SERVICE, REFLECTION_SERVICE) if config.reflection else (HEALTH_SERVICE,)
        interceptor = CallGuard(keys, limits, metrics, audit, open_services)
        metrics.watch_admission(admission)
        return cls(keys, limits, admission, audit, interceptor)

    def authorize(
        self, key: str | None, role: Role, collection: str | None = None, what: str = "this call"
    ) -> Principal:
        """The principal of `key` (None: none sent) if it may do `role` on `collection`: the HTTP front door's check
        (401 for UnauthenticatedError, 403 for PermissionDeniedError). The gRPC interceptor does the same."""
        principal = self.keys.authenticate(key)
        principal.require(role, collection, what)
        return principal

    def http_authorizer(self, key: str | None, action: str, collection: str | None) -> None:
        """service.http's Authorizer: its actions mapped to roles ("read" and "generate": read; "write"; "admin"),
        then the key's rate limit. Raises UnauthenticatedError (401), PermissionDeniedError (403) or
        TooManyRequestsError (429)."""
        role = {"read": Role.READ, "generate": Role.READ, "write": Role.WRITE, "admin": Role.ADMIN}[action]
        principal = self.authorize(key, role, collection, what=f"{action} requests")
        self.limits.admit(principal)
        set_current_principal(principal)

    def close(self) -> None:
        self.keys.flush_usage()
        self.audit.close()


def check_exposure(config: ServerConfig, keys: KeyStore) -> None:
    """Refuse to serve a non-loopback address without keys, unless --insecure (then warn)."""
    hosts = {config.host, config.metrics_host} if config.metrics_port is not None else {config.host}
    exposed = sorted(h for h in hosts if not is_loopback(h))
    if keys.enabled or not exposed:
        if exposed and config.tls_cert is None:
            log.warning("serving %s without TLS: API keys and data cross the network in clear", config.host)
        return
    if config.insecure:
        log.warning(
            "INSECURE: serving %s with no API key: anyone who reaches the port can read, write and delete every "
            "collection (create a key: pqrag keys create --data-dir %s --role admin)",
            config.host,
            config.data_dir,
        )
        return
    raise UnsafeConfigError(
        f"refusing to serve {config.host} with no API key in {config.data_dir}: anyone who reaches the port could "
        f"read, write and delete every collection. Create a key first:\n"
        f"    pqrag keys create --data-dir {config.data_dir} --role admin --name admin\n"
        "then pass it to clients (--api-key or $PQRAG_API_KEY); or serve 127.0.0.1 only; or, on a network you trust, "
        "add --insecure"
    )


def bootstrap_admin_key(keys: KeyStore, path: str) -> None:
    """Register the key in `path` (a Docker/Kubernetes secret, made with `pqrag keys generate`) as the admin key
    "bootstrap" if it is not registered yet; a changed secret replaces the previous bootstrap key."""
    try:
        key = Path(path).read_text().strip()
    except OSError as exc:
        raise UnsafeConfigError(f"cannot read the admin key file {path}: {exc.strerror}") from None
    if keys.find(key) is not None:
        return
    try:
        keys.revoke("bootstrap")
    except Exception:  # none yet
        pass
    try:
        keys.create(Role.ADMIN, name="bootstrap", key=key)
    except InvalidArgumentError as exc:
        raise UnsafeConfigError(f"the admin key file {path}: {exc} (make one with `pqrag keys generate`)") from None
    append_audit(keys.dir, key="(server)", method="keys.bootstrap", outcome="OK", detail={"name": "bootstrap"})
    log.info("registered the admin key from %s as 'bootstrap'", path)
