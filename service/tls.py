"""TLS for the server (gRPC and HTTP alike) and for clients; mutual TLS when the server is given a client CA.

    tls = ServerTLS(cert="server.pem", key="server.key", client_ca="clients-ca.pem")   # client_ca: mTLS
    port = grpc_server.add_secure_port("0.0.0.0:50051", tls.grpc_credentials())
    context = tls.ssl_context()               # the HTTP front door: ssl.SSLContext, client certs required with mTLS

    creds = client_credentials(ca="ca.pem", cert="client.pem", key="client.key")   # the CLI's --tls-ca/-cert/-key
    channel = grpc.secure_channel("server.example:50051", creds)

Files are PEM; they are read when the server starts (a renewed certificate needs a restart).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from common.errors import InvalidArgumentError


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read the {what} {path}: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise InvalidArgumentError(f"the {what} {path} is not PEM (no -----BEGIN line)")
    return data


@dataclass(frozen=True)
class ServerTLS:
    cert: str  # the server's certificate chain (PEM)
    key: str  # its private key (PEM)
    client_ca: str | None = None  # CA bundle that client certificates must chain to: mutual TLS; None: server TLS

    def grpc_credentials(self) -> grpc.ServerCredentials:
        pair = (_read(self.key, "TLS key"), _read(self.cert, "TLS certificate"))
        ca = _read(self.client_ca, "client CA")
        return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)

    def ssl_context(self) -> ssl.SSLContext:
        """A server-side context for the HTTP front door (uvicorn/asyncio take one), TLS 1.2 at least."""
        for path, what in ((self.cert, "TLS certificate"), (self.key, "TLS key"), (self.client_ca, "client CA")):
            _read(path, what)  # the same messages as for gRPC
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        if self.client_ca is not None:
            ctx.load_verify_locations(self.client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


def client_credentials(
    ca: str | None = None, cert: str | None = None, key: str | None = None
) -> grpc.ChannelCredentials:
    """Channel credentials: the server's CA (None: the system's roots) and, for mutual TLS, a client cert and key."""
    if (cert is None) != (key is None):
        raise InvalidArgumentError(
            "a client certificate needs its key, and a key its certificate (--tls-cert, --tls-key)"
        )
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "CA"),
        private_key=_read(key, "client key"),
        certificate_chain=_read(cert, "client certificate"),
    )
