"""The gRPC server interceptor every call goes through before its servicer (CallGuard), in this order:

1. draining: once the server is stopping (SIGTERM), new calls get UNAVAILABLE; health and reflection stay open;
2. the API key (`authorization: Bearer KEY`, service.auth) -> UNAUTHENTICATED, and the method's role ->
   PERMISSION_DENIED (METHOD_ROLES; a pqrag method missing from it needs admin: new methods are closed by default);
3. the key's rate limit (service.ratelimit) -> RESOURCE_EXHAUSTED;
4. decoding the request here, not in grpc: bytes that are not a valid message (bad UTF-8 in a string, a corrupt
   wire format, nesting past protobuf's depth limit) get INVALID_ARGUMENT, where grpc.aio answers UNKNOWN for a
   unary request and a streaming servicer's reader would raise INTERNAL;
5. the key's collection scope, checked on every decoded message (each IngestRequest of a stream too);
6. for write and admin methods, an audit entry (service.audit) with the key, collection, ids and outcome.

It replaces each method's handler by one that takes the raw bytes (request_deserializer=None) and does the above
around the original behaviour; the principal is set for the call's task (service.auth.current_principal), so a
servicer can narrow what it returns (ListCollections shows a scoped key its collections only).

An open request stream (IngestStream, Ingest) also ends when the server starts draining: the messages already read
are processed and acknowledged, then the stream fails with UNAVAILABLE, so no document is acknowledged that was not
stored, and every one not acknowledged is for the client to resend.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection

from common.errors import InvalidArgumentError, PqragError, UnavailableError, quote
from service.audit import AuditLog
from service.auth import KeyStore, Principal, Role, bearer_token, set_current_principal
from service.metrics import ServerMetrics
from service.ratelimit import RateLimits
from service.status import status_and_details

log = logging.getLogger("pqrag.server")

HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICE = reflection.SERVICE_NAME

METHOD_ROLES: dict[str, Role] = {
    "/pqrag.v1.Search/Search": Role.READ,
    "/pqrag.v1.Documents/GetDocument": Role.READ,
    "/pqrag.v1.Collections/GetCollection": Role.READ,
    "/pqrag.v1.Collections/ListCollections": Role.READ,
    "/pqrag.v1.Rag/Ask": Role.READ,
    "/pqrag.v1.Rag/Chat": Role.READ,
    "/pqrag.v1.Documents/Ingest": Role.WRITE,
    "/pqrag.v1.Documents/IngestStream": Role.WRITE,
    "/pqrag.v1.Documents/DeleteDocument": Role.WRITE,
    "/pqrag.v1.Collections/CreateCollection": Role.ADMIN,
    "/pqrag.v1.Collections/UpdateCollection": Role.ADMIN,
    "/pqrag.v1.Collections/DeleteCollection": Role.ADMIN,
}


class UndecodableRequestError(InvalidArgumentError):
    """Request bytes that do not parse as the method's message."""


def collection_of(request: Any) -> str | None:
    """The collection a request names ("" or None: none), for the scope check and the audit log."""
    kind = request.DESCRIPTOR.name
    if kind in ("GetCollectionRequest", "DeleteCollectionRequest"):
        return request.name or None
    if kind in ("CreateCollectionRequest", "UpdateCollectionRequest"):
        return request.collection.name or None
    f = request.DESCRIPTOR.fields_by_name.get("collection")
    if f is not None and f.type == f.TYPE_STRING:
        return request.collection or None
    return None


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


@dataclass
class _Call:
    """One call's bookkeeping: its method, who made it, what it touched (for the audit log)."""

    method: str  # "/pqrag.v1.Search/Search"
    role: Role | None  # None: an open service (health, reflection)
    principal: Principal | None = None
    collection: str | None = None
    ids: list[str] = field(default_factory=list)
    outcome: str | None = None  # set when the guard aborts the call itself

    @property
    def short(self) -> str:
        return self.method.rsplit("/", 1)[-1]

    def note_request(self, request: Any) -> None:
        """Record what the request touches, then check the key's scope (PermissionDeniedError)."""
        name = collection_of(request)
        doc_id = getattr(request, "document_id", None)
        if isinstance(doc_id, str) and doc_id:
            self.ids.append(doc_id[:512])
        if name is not None:
            self.collection = self.collection or name[:64]
            if self.principal is not None and self.role is not None:
                self.principal.require(self.role, collection=name, what=self.short)

    def note_response(self, response: Any) -> None:
        if self.role is None or self.role < Role.WRITE:
            return
        doc_id = getattr(response, "document_id", None)
        if isinstance(doc_id, str) and doc_id and response.DESCRIPTOR.name == "IngestAck":
            self.ids.append(doc_id)
        self.ids.extend(getattr(response, "document_ids", ()))


class CallGuard(grpc.aio.ServerInterceptor):
    """The interceptor (module docstring). `draining` is set by Server.stop; reflection may be left out of the open
    services (--no-reflection: then it is not registered at all)."""

    def __init__(
        self,
        keys: KeyStore,
        limits: RateLimits,
        metrics: ServerMetrics,
        audit: AuditLog | None = None,
        open_services: tuple[str, ...] = (HEALTH_SERVICE, REFLECTION_SERVICE),
    ):
        self.keys = keys
        self.limits = limits
        self.metrics = metrics
        self.audit = audit
        self.open_services = frozenset(open_services)
        self.draining = False
        self._drained = asyncio.Event()
        self.in_flight = 0  # calls of non-open services running now
        self._idle = asyncio.Event()
        self._idle.set()
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def drain(self) -> None:
        """From now on refuse new calls and end open request streams (module docstring). Call on the loop."""
        self.draining = True
        self._drained.set()

    async def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no call is in flight (at most `timeout` seconds); True when none is left."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def _enter(self, call: _Call) -> None:
        if call.role is not None:
            self.in_flight += 1
            self._idle.clear()

    def _leave(self, call: _Call) -> None:
        if call.role is not None:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        cached = self._handlers.get(details.method)
        if cached is None or cached[0] is not handler:
            cached = (handler, self._wrap(details.method, handler))
            self._handlers[details.method] = cached
        return cached[1]

    # --- the steps ----------------------------------------------------------------------------------------------

    async def _reject(self, context: grpc.aio.ServicerContext, call: _Call, exc: Exception) -> None:
        code, details = status_and_details(exc, call.short)
        call.outcome = code.name
        self.metrics.requests.labels(call.short, code.name).inc()
        await context.abort(code, details)

    def _admit(self, context: grpc.aio.ServicerContext, call: _Call) -> None:
        """Steps 1-3; raises the PqragError to answer with."""
        if call.role is None:
            return
        if self.draining:
            raise UnavailableError("the server is shutting down; retry on another server or after its restart")
        metadata = context.invocation_metadata() or ()
        header = next((v for k, v in metadata if k == "authorization"), None)
        call.principal = self.keys.authenticate(bearer_token(header if isinstance(header, str) else None))
        call.principal.require(call.role, what=call.short)
        self.limits.admit(call.principal)

    @staticmethod
    def _decode(decode: Callable | None, raw: bytes, call: _Call) -> Any:
        try:
            return decode(raw) if decode is not None else raw
        except Exception as exc:  # DecodeError, RecursionError on deep nesting, ...
            raise UndecodableRequestError(
                f"{call.short}: the request is not a valid message for this method ({type(exc).__name__}: "
                f"{quote(str(exc))}); send a well-formed protobuf message with UTF-8 strings"
            ) from None

    async def _requests(self, raw_iter: AsyncIterator[bytes], decode: Callable | None, call: _Call) -> AsyncIterator:
        """A request stream decoded and scope-checked message by message, ending with UnavailableError when the
        server starts draining (even while waiting for the client's next message)."""
        it = raw_iter.__aiter__()
        while True:
            if self.draining and call.role is not None:
                raise UnavailableError(
                    "the server is shutting down and stopped reading this stream: every document acknowledged is "
                    "stored; resend the others (a resend with the same id replaces, so it is safe)"
                )
            nxt = asyncio.ensure_future(it.__anext__())
            nxt.add_done_callback(_retrieve)  # a read failing after the call ended (aborted) is nobody's error
            if call.role is not None:
                drained = asyncio.ensure_future(self._drained.wait())
                await asyncio.wait((nxt, drained), return_when=asyncio.FIRST_COMPLETED)
                drained.cancel()
                if not nxt.done():
                    nxt.cancel()
                    continue  # draining: raised above
            try:
                raw = await nxt
            except StopAsyncIteration:
                return
            request = self._decode(decode, raw, call)
            call.note_request(request)
            yield request

    def _audit(self, context: grpc.aio.ServicerContext, call: _Call, error: BaseException | None) -> None:
        if self.audit is None or call.role is None or call.role < Role.WRITE:
            return
        outcome = call.outcome
        if outcome is None:
            code = context.code() if hasattr(context, "code") else None
            if isinstance(error, asyncio.CancelledError):
                outcome = "CANCELLED"
            elif isinstance(code, grpc.StatusCode):
                outcome = code.name
            else:
                outcome = "OK" if error is None else "UNKNOWN"
        key = call.principal.name if call.principal is not None else "(unauthenticated)"
        self.audit.record(
            key=key, method=call.short, collection=call.collection, ids=call.ids, outcome=outcome, peer=context.peer()
        )

    # --- the wrapped handler ------------------------------------------------------------------------------------

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service = method.split("/")[1]
        role = None if service in self.open_services else METHOD_ROLES.get(method, Role.ADMIN)
        decode = handler.request_deserializer
        streaming_in, streaming_out = handler.request_streaming, handler.response_streaming
        behavior = {
            (False, False): handler.unary_unary,
            (False, True): handler.unary_stream,
            (True, False): handler.stream_unary,
            (True, True): handler.stream_stream,
        }[(streaming_in, streaming_out)]
        generates = inspect.isasyncgenfunction(behavior)
        enter, leave, admit, reject, audit = self._enter, self._leave, self._admit, self._reject, self._audit
        decode_one, decode_stream = self._decode, self._requests

        async def prepare(arg: Any, context: grpc.aio.ServicerContext, call: _Call) -> Any:
            """Steps 1-5: the request (or decoded request stream) for the original behaviour."""
            admit(context, call)
            if call.principal is not None:
                set_current_principal(call.principal)  # this call's task only (its own context)
            if streaming_in:
                return decode_stream(arg, decode, call)
            request = decode_one(decode, arg, call)
            call.note_request(request)
            return request

        async def unary(arg, context):
            call, error = _Call(method, role), None
            enter(call)
            try:
                try:
                    request = await prepare(arg, context, call)
                except PqragError as exc:
                    await reject(context, call, exc)
                try:
                    response = await behavior(request, context)
                except PqragError as exc:  # an undecodable message of a stream, in a handler without status.rpc
                    await reject(context, call, exc)
                call.note_response(response)
                return response
            except BaseException as exc:
                error = exc
                raise
            finally:
                leave(call)
                audit(context, call, error)

        async def stream(arg, context):
            call, error = _Call(method, role), None
            enter(call)
            try:
                try:
                    request = await prepare(arg, context, call)
                except PqragError as exc:
                    await reject(context, call, exc)
                try:
                    if generates:
                        async for response in behavior(request, context):
                            call.note_response(response)
                            yield response
                    else:  # a handler that writes through context.write (grpc.health's Watch)
                        await behavior(request, context)
                except PqragError as exc:
                    await reject(context, call, exc)
            except BaseException as exc:
                error = exc
                raise
            finally:
                leave(call)
                audit(context, call, error)

        kwargs = {"request_deserializer": None, "response_serializer": handler.response_serializer}
        if streaming_out:
            make = grpc.stream_stream_rpc_method_handler if streaming_in else grpc.unary_stream_rpc_method_handler
            return make(stream, **kwargs)
        make = grpc.stream_unary_rpc_method_handler if streaming_in else grpc.unary_unary_rpc_method_handler
        return make(unary, **kwargs)
