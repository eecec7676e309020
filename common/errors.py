"""The errors pqrag raises on purpose, one class per way a caller can be wrong.

Nothing below the service knows about gRPC or HTTP: the service maps each class to one status code
(service/status.py), and any other exception is a bug of ours (INTERNAL). Messages are written for the person who
sent the request: what was wrong and what to send instead.
"""

from __future__ import annotations


class PqragError(Exception):
    """Base class of every error raised on purpose for the caller to read."""


class InvalidArgumentError(PqragError, ValueError):
    """Bad input: empty text, k out of range, an unknown filter operator, a prompt longer than the window.

    Also a ValueError, so callers that only know the builtin still catch it.
    """


class NotFoundError(PqragError, LookupError):
    """A collection, document or model that does not exist."""


class AlreadyExistsError(PqragError):
    """Creating something whose name is taken."""


class ResourceExhaustedError(PqragError):
    """Over a limit: a document over the size limit, a full request queue. Retrying later (or smaller) can work."""


class TooManyRequestsError(ResourceExhaustedError):
    """Over a rate or queue limit (a key's rate limit, admission control): the same request later works (HTTP 429,
    where a request too large for any limit is 413)."""


class FailedPreconditionError(PqragError):
    """The system is not in a state that can serve the call (e.g. a server started without a generator)."""


class PermissionDeniedError(PqragError):
    """The caller is known but may not do this: a key whose role or collections do not cover the call, an embedder
    that is not among the server's allowed models."""


class UnauthenticatedError(PqragError):
    """No valid credentials: a missing, malformed, unknown, expired or revoked API key."""


class UnavailableError(PqragError):
    """The server cannot serve the call now but may later: shutting down, its generator engine died. Retry
    elsewhere or later."""


QUOTE_LIMIT = 200  # characters of caller input a message quotes at most


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """repr(value) cut to about `limit` characters, for messages that echo caller input: an error about a 100 KB id
    must not be 100 KB long (gRPC refuses trailers past its metadata limit)."""
    text = value if isinstance(value, str) else None
    if text is not None and len(text) > limit:
        return f"{text[:limit]!r}... ({len(text)} characters)"
    out = repr(value)
    return out if len(out) <= limit + 2 else f"{out[:limit]}... ({len(out)} characters)"
