"""The OpenAI-compatible API under /v1: models, chat completions, completions, embeddings.

Each route checks the key, translates the request (service.http.schemas) into a domain call (generation's event
streams: the shared AsyncLLM, or rag's pipeline with the `rag` extension) and the events back into OpenAI's
objects (service.http.openai_format), whole or as server-sent events (service.http.streaming).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.http import openai_format as fmt
from service.http.auth import authorize
from service.http.context import HttpContext
from service.http.embeddings import embed, embedders
from service.http.errors import ApiError
from service.http.generation import Event, PrimedStream, chat_events, completion_events
from service.http.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, GenerationBody
from service.http.streaming import Logprobs, collect, event_stream, until_disconnect

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])
_STARTED = int(time.time())  # the models' "created"


def _ctx(request: Request) -> HttpContext:
    return request.app.state.ctx


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The served generator (under --served-model-name) and the embedders of the collections."""
    await authorize(request, "read")
    ctx = _ctx(request)
    data = []
    if ctx.generator is not None:
        data.append(
            {
                "id": ctx.served_model_name,
                "object": "model",
                "created": _STARTED,
                "owned_by": "pqrag",
                "type": "generator",
                "max_model_len": ctx.generator.max_model_len,
            }
        )
    for name, colls in (await ctx.run(embedders, ctx.collections)).items():
        data.append(
            {
                "id": name,
                "object": "model",
                "created": _STARTED,
                "owned_by": "pqrag",
                "type": "embedder",
                "dimension": colls[0].dimension,
                "collections": [c.name for c in colls],
            }
        )
    return {"object": "list", "data": data}


async def _complete(
    request: Request,
    body: GenerationBody,
    c: fmt.Completion,
    events: AsyncIterator[Event],
    logprobs: Logprobs | None,
) -> Response:
    if body.stream:
        stream = await until_disconnect(request, PrimedStream(events).prime())
        return event_stream(c, stream, logprobs, body.include_usage)
    end = await until_disconnect(request, collect(c, events, keep_logprobs=logprobs is not None))
    return JSONResponse(fmt.response(c, end, logprobs(c.pieces, 0) if logprobs is not None else None))


def _rag_collection(body: GenerationBody) -> str | None:
    return body.rag.collection if body.rag is not None else None


def _check_logprobs(body: GenerationBody, top_n: int | None) -> None:
    if top_n is not None and body.rag is not None:
        raise ApiError(400, "logprobs are not available for RAG answers", param="logprobs")


@router.post("/chat/completions")
async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
    """A chat completion, streamed with `"stream": true`. With `"rag": {"collection": ...}` the answer is grounded
    in the collection and carries `citations`."""
    await authorize(request, "generate", _rag_collection(body))
    ctx = _ctx(request)
    body.unsupported()
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    top_n = body.num_logprobs
    _check_logprobs(body, top_n)
    sampling = body.sampling(max_tokens)
    if top_n is not None:
        sampling["logprobs"] = top_n
    events = await chat_events(ctx, body.model, body.messages, sampling, body.rag)
    c = fmt.Completion("chat", body.model or ctx.served_model_name or "", [] if body.rag is not None else None)
    tok = ctx.generator.tokenizer if ctx.generator is not None else None  # None: a RAG answer (no logprobs)
    logprobs = (lambda pieces, _offset: fmt.chat_logprobs(tok, pieces, top_n)) if top_n is not None else None
    return await _complete(request, body, c, events, logprobs)


@router.post("/completions")
async def completions(request: Request, body: CompletionRequest) -> Response:
    """A text completion of `prompt` (text, or token ids), streamed with `"stream": true`; `rag` as for chat."""
    await authorize(request, "generate", _rag_collection(body))
    ctx = _ctx(request)
    body.unsupported()
    top_n = body.logprobs
    _check_logprobs(body, top_n)
    sampling = body.sampling(body.max_tokens)
    if top_n is not None:
        sampling["logprobs"] = top_n
    events = await completion_events(ctx, body.model, body.prompt, sampling, body.rag)
    c = fmt.Completion("text", body.model or ctx.served_model_name or "", [] if body.rag is not None else None)
    tok = ctx.generator.tokenizer if ctx.generator is not None else None  # None: a RAG answer (no logprobs)
    logprobs = (lambda pieces, offset: fmt.text_logprobs(tok, pieces, top_n, offset)) if top_n is not None else None
    return await _complete(request, body, c, events, logprobs)


@router.post("/embeddings")
async def embeddings(request: Request, body: EmbeddingRequest) -> dict[str, Any]:
    """Embeddings of a string or a list of strings by a collection's embedder (float or base64)."""
    await authorize(request, "generate")
    ctx = _ctx(request)
    return await ctx.run(embed, ctx.collections, body)
