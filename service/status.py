"""Errors -> gRPC status codes, in one table, and the decorator every servicer method goes through.

The domain raises the `common.errors` classes on purpose, each for one way a caller can be wrong; STATUS_CODES
maps exactly those. Any other exception (a plain ValueError included) is a bug of ours: INTERNAL, with the
traceback in the server log, and the server keeps serving.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable

import grpc

from common.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)

log = logging.getLogger("pqrag.server")

STATUS_CODES: dict[type[Exception], grpc.StatusCode] = {
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,  # llm's QueueFullError too: a subclass
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,  # e.g. Rag on a --no-generator server
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,  # a key's role or scope; an embedder not allowed
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,  # no valid API key
    UnavailableError: grpc.StatusCode.UNAVAILABLE,  # shutting down, the engine died: retry elsewhere or later
}
# Characters of a status message at most: gRPC refuses trailers past its metadata limit (8 KiB by default), and a
# message that quoted a 100 KB input would turn the caller's mistake into RESOURCE_EXHAUSTED.
MAX_DETAILS = 2000


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status code of an exception raised while serving a call: its class's (or a base's), else INTERNAL."""
    for kind, code in STATUS_CODES.items():
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def status_and_details(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    """The code and message a call that raised `exc` ends with; INTERNAL errors are logged with the traceback."""
    code = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method, exc_info=exc)
        details = f"internal error: {type(exc).__name__}: {exc}"
    else:
        details = str(exc)
    if len(details) > MAX_DETAILS:
        details = details[: MAX_DETAILS - 40] + f"... ({len(details)} characters in all)"
    return code, details


def rpc(method: str) -> Callable:
    """Metrics and error mapping for one servicer method (unary, client-streaming or streaming responses).

    The servicer method raises; this aborts the call with the mapped code and the exception's message.
    `self` must have `metrics` (service.metrics.ServerMetrics).
    """

    def decorate(fn: Callable) -> Callable:
        async def fail(context: grpc.aio.ServicerContext, outcome: dict, exc: Exception) -> None:
            if context.code() not in (None, grpc.StatusCode.OK):
                raise exc  # the handler already aborted with its own code
            code, details = status_and_details(exc, method)
            outcome["code"] = code.name
            await context.abort(code, details)

        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def stream_wrapper(self, request, context):
                with self.metrics.observe(method) as outcome:
                    try:
                        async for item in fn(self, request, context):
                            yield item
                    except Exception as exc:
                        await fail(context, outcome, exc)

            return stream_wrapper

        @functools.wraps(fn)
        async def wrapper(self, request, context):
            with self.metrics.observe(method) as outcome:
                try:
                    return await fn(self, request, context)
                except Exception as exc:
                    await fail(context, outcome, exc)

        return wrapper

    return decorate
