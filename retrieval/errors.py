"""Domain errors of the retrieval layer.

The gRPC service maps each class to one status code (NotFoundError -> NOT_FOUND, ...); nothing in
`retrieval/` knows about gRPC. Messages are written for the person who sent the request: they say
what was wrong and what to send instead.
"""

from __future__ import annotations


class RetrievalError(Exception):
    """Base class of every error `retrieval/` raises on purpose."""


class NotFoundError(RetrievalError):
    """A collection or document that does not exist."""


class AlreadyExistsError(RetrievalError):
    """Creating a collection whose name is taken."""


class InvalidArgumentError(RetrievalError, ValueError):
    """Bad user input (empty text, k out of range, unknown filter operator, wrong vector dimension...).

    Also a ValueError, so callers that only know the builtin still catch it.
    """


class ResourceExhaustedError(RetrievalError):
    """Input larger than the server accepts (a document text over the size limit)."""
