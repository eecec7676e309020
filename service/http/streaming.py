"""Completions over HTTP: the whole answer, or server-sent events, and what happens when the client goes away.

A client that disconnects aborts its request and frees its KV blocks:
- while its answer streams, Starlette's StreamingResponse sees the disconnect and cancels the task iterating the
  events; the cancellation runs the engine stream's cleanup (AsyncLLM.generate aborts the request);
- before the answer starts (a non-streaming request, or a stream still retrieving / queued / in prefill),
  `until_disconnect` runs the work as a task beside a watcher of the connection and cancels the work when the
  client is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from service.http import openai_format as fmt
from service.http.errors import ApiError, ClientDisconnected, api_error_of, error_body
from service.http.generation import End, Event, Piece, PrimedStream, Start

T = TypeVar("T")
Logprobs = Callable[[list[Piece], int], dict[str, Any]]  # (pieces, text offset) -> a chunk's logprobs object

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}  # no proxy buffering of the stream


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the request body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """The result of `work`, or ClientDisconnected after cancelling it when the client goes away first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # its cleanup (the abort) has run when this returns
        raise ClientDisconnected()
    return task.result()


async def collect(c: fmt.Completion, events: AsyncIterator[Event], keep_logprobs: bool) -> End:
    """Run a completion to its end, accumulating its text (and pieces, for logprobs) in c."""
    end = None
    async for event in events:
        if isinstance(event, Start):
            if c.citations is not None:
                c.citations = event.citations
        elif isinstance(event, Piece):
            c.text.append(event.text)
            if keep_logprobs:
                c.pieces.append(event)
        else:
            end = event
    assert end is not None, "a completion stream ends with End"
    if end.finish_reason == "abort":
        raise ApiError(503, "the request was aborted (the server is shutting down); retry it", code="aborted")
    return end


def event_stream(
    c: fmt.Completion, stream: PrimedStream, logprobs: Logprobs | None, include_usage: bool
) -> StreamingResponse:
    """The completion as server-sent events: the first chunk (the chat role; the citations with RAG), a chunk per
    piece of text, a last one with the finish reason, the usage when asked for, then [DONE]. An error after the
    stream started is sent as an `{"error": ...}` event (the openai SDK raises it), then [DONE].

    logprobs: a callable (pieces, text offset) -> the logprobs object of a chunk; None when none were asked for."""

    async def body() -> AsyncIterator[bytes]:
        sent = 0  # characters of text sent so far (the completions' logprobs text_offset)
        try:
            async for event in stream:
                if isinstance(event, Start):
                    if c.citations is not None:
                        c.citations = event.citations
                    if c.kind == "chat" or c.citations is not None:
                        yield fmt.sse(fmt.chunk(c, "", first=True))
                elif isinstance(event, Piece):
                    lp = logprobs([event], sent) if logprobs is not None else None
                    sent += len(event.text)
                    yield fmt.sse(fmt.chunk(c, event.text, logprobs=lp))
                else:
                    yield fmt.sse(fmt.chunk(c, None if c.kind == "chat" else "", finish_reason=event.finish_reason))
                    if include_usage:
                        yield fmt.sse(fmt.usage_chunk(c, event))
        except Exception as exc:  # the status line is sent: the error travels in the stream
            err = api_error_of(exc)
            yield fmt.sse(error_body(err.status, err.message, err.param, err.code))
        yield fmt.DONE

    return StreamingResponse(
        body(), media_type="text/event-stream", headers=SSE_HEADERS, background=BackgroundTask(stream.aclose)
    )
