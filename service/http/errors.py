"""Errors -> HTTP status codes in OpenAI's JSON shape, in one table, and the app's exception handlers.

Every error leaves as {"error": {"message", "type", "param", "code"}} with its status, so the openai SDK raises
its matching class (BadRequestError, AuthenticationError, PermissionDeniedError, NotFoundError, ConflictError,
RateLimitError, InternalServerError). The domain's `common.errors` classes map like their gRPC codes do in
service/status.py; anything else is a bug of ours: 500, with the traceback in the server log.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from common.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    PqragError,
    ResourceExhaustedError,
    TooManyRequestsError,
    UnauthenticatedError,
    UnavailableError,
)
from llm.scheduler import QueueFullError

log = logging.getLogger("pqrag.http")

# OpenAI's error types by status (the SDK picks its exception class from the status; the type is for people).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}

# First match wins: a full queue or a rate limit is a ResourceExhaustedError that retrying later fixes (429), where
# a document over the size limit (413) needs a smaller request.
STATUSES: list[tuple[type[Exception], int, str | None]] = [
    (QueueFullError, 429, "rate_limit_exceeded"),
    (TooManyRequestsError, 429, "rate_limit_exceeded"),
    (UnauthenticatedError, 401, "invalid_api_key"),
    (PermissionDeniedError, 403, "permission_denied"),
    (NotFoundError, 404, "not_found"),
    (AlreadyExistsError, 409, "already_exists"),
    (InvalidArgumentError, 400, "invalid_value"),
    (ResourceExhaustedError, 413, "too_large"),
    (FailedPreconditionError, 503, "unavailable"),  # e.g. a chat completion on a --no-generator server
    (UnavailableError, 503, "unavailable"),  # shutting down, the engine died
]


class ApiError(Exception):
    """An error the HTTP layer raises itself (an unknown model, a missing key): status, message and OpenAI's
    `param` / `code` fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


class BodyTooLarge(HTTPException):
    """Raised while a request body is read, when it passes the server's limit (FastAPI lets HTTPExceptions raised
    there through to the handlers)."""

    code = "request_too_large"

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is over the server's limit of {limit} bytes (--max-message-mb)")


class ClientDisconnected(Exception):
    """The client went away before its answer was complete; its request was aborted."""


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param, "code": code}
    }


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status)


def status_of(exc: BaseException) -> tuple[int, str | None]:
    """(HTTP status, OpenAI code) of an exception raised while serving a request: its class's, else 500."""
    for kind, status, code in STATUSES:
        if isinstance(exc, kind):
            return status, code
    return 500, None


def api_error_of(exc: BaseException) -> ApiError:
    """Any exception as the ApiError it is answered with (logged when it is ours: a 500)."""
    if isinstance(exc, ApiError):
        return exc
    status, code = status_of(exc)
    if status == 500:
        log.error("request failed", exc_info=exc)
        return ApiError(500, f"internal error: {type(exc).__name__}: {exc}")
    return ApiError(status, str(exc), code=code)


def _param(loc: tuple[Any, ...]) -> str:
    """pydantic's location ("body", "messages", 0, "content") as OpenAI names a parameter: messages[0].content."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path") else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def install(app: FastAPI) -> None:
    """Answer every error of `app` in OpenAI's shape."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(PqragError)
    async def domain_error(request: Request, exc: PqragError) -> JSONResponse:
        err = api_error_of(exc)
        return error_response(err.status, err.message, err.param, err.code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI answers 422; OpenAI's API (and its SDK's BadRequestError) use 400 for a malformed request.
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = _param(tuple(first.get("loc", ())))
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        return error_response(400, message, param or None, "invalid_request")

    @app.exception_handler(ClientDisconnected)
    async def gone(request: Request, exc: ClientDisconnected) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it, the logs do

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), code=getattr(exc, "code", None))
