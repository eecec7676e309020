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


class FailedPreconditionError(PqragError):
    """The system is not in a state that can serve the call (e.g. a server started without a generator)."""
