"""Who may do what over HTTP: one check per route, answered 401/403 in OpenAI's error shape.

Routes call `await authorize(request, action, collection)` first. The check itself is the server's `Authorizer`
(HttpContext.authorize; the server plugs in service.gate's, the same keys, roles, collection scopes and rate limits
as gRPC's interceptor): given the request's bearer key (`Authorization: Bearer KEY`, as the openai SDK sends its
api_key), the action and the collection it touches, it returns or raises (UnauthenticatedError: 401,
PermissionDeniedError: 403, TooManyRequestsError: 429). `allow_all` allows everything.

Actions: "read" (models, health details, listing, search, getting a document), "generate" (completions,
embeddings, RAG answers), "write" (ingesting, deleting a document), "admin" (creating, updating, deleting a
collection).
"""

from __future__ import annotations

from typing import Protocol

from fastapi import Request

from service.auth import bearer_token

ACTIONS = ("read", "generate", "write", "admin")


class Authorizer(Protocol):
    def __call__(self, key: str | None, action: str, collection: str | None) -> None:
        """Return when the holder of `key` (None: no key sent) may do `action` on `collection` (None: no one
        collection); raise for a missing or unknown key (401) or a key without the right (403)."""


def allow_all(key: str | None, action: str, collection: str | None) -> None:
    """No API keys configured: everyone may do everything (the server listens on localhost by default)."""


async def authorize(request: Request, action: str, collection: str | None = None) -> None:
    assert action in ACTIONS, action
    ctx = request.app.state.ctx  # service.http.context.HttpContext
    ctx.authorize(bearer_token(request.headers.get("authorization")), action, collection)
