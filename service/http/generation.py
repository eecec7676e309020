"""Completions as one stream of events, whether they come from the generator alone or from rag's answer pipeline:
Start (the citations; none without RAG) -> Piece* (new text, its token ids and logprobs) -> End (finish reason,
token counts).

A RAG request goes through rag.RagPipeline with an AnswerRequest (retrieve, cite, prompt, generate: the same
path as the gRPC Ask/Chat); a plain one renders the chat template (or encodes the prompt) and streams the shared
AsyncLLM. Requests are validated where they enter the domain (AnswerRequest, SamplingParams, the engine's window
check), so a bad one raises before anything is generated; `primed` then pulls a stream up to its first text so
that the errors of the engine's admission (queue full, window) also come before a response starts.

Closing a stream early (the client went away: its task is cancelled) aborts the request, which frees its KV
blocks at once (AsyncLLM.generate's cleanup).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llm.sampler import SamplingParams
from rag.passages import Passage
from rag.pipeline import AnswerEnd, Context, RagPipeline, TextDelta
from rag.prompt import chat_messages
from rag.request import AnswerRequest, checked_messages
from service.admission import AdmittedGenerator
from service.auth import current_principal
from service.http.context import HttpContext
from service.http.errors import ApiError
from service.http.schemas import ChatMessage, RagOptions

if TYPE_CHECKING:
    from llm.async_engine import AsyncLLM


@dataclass(frozen=True)
class Start:
    citations: list[Passage]  # numbered 1..n, exactly the passages in the prompt; [] without RAG


@dataclass(frozen=True)
class Piece:
    text: str
    token_ids: list[int] = field(default_factory=list)  # [] for RAG answers (the pipeline streams text)
    logprobs: list[dict[int, float]] | None = None  # per token: {sampled id: logprob, top-N ids: logprob}


@dataclass(frozen=True)
class End:
    finish_reason: str  # "stop", "length" or "abort"
    prompt_tokens: int
    completion_tokens: int


Event = Start | Piece | End


def message_texts(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """OpenAI messages as the domain takes them: {"role", "content": text}. Content parts are joined (text parts
    only); "developer" is OpenAI's newer name for "system". Roles and texts are checked by the domain."""
    out = []
    for i, m in enumerate(messages):
        content = m.content
        if isinstance(content, list):
            if any(p.type != "text" or p.text is None for p in content):
                raise ApiError(400, "only text content parts are supported", param=f"messages[{i}].content")
            content = "\n".join(p.text for p in content if p.text is not None)
        role = "system" if m.role == "developer" else m.role
        out.append({"role": role, "content": content if content is not None else ""})
    return out


def rag_request(rag: RagOptions, messages: list[dict[str, str]], sampling: Mapping[str, Any]) -> AnswerRequest:
    fields: dict[str, Any] = {"collection": rag.collection, "messages": messages, "sampling": dict(sampling)}
    if rag.top_k is not None:
        fields["num_passages"] = rag.top_k
    if rag.filter is not None:
        fields["filter"] = rag.filter
    if rag.grounding is not None:
        fields["grounding"] = rag.grounding
    return AnswerRequest(**fields)


async def chat_events(
    ctx: HttpContext,
    model: str | None,
    messages: Sequence[ChatMessage],
    sampling: Mapping[str, Any],
    rag: RagOptions | None,
) -> AsyncIterator[Event]:
    """The events of a chat completion; raises (before the first event) for a bad request."""
    if rag is not None:
        ctx.check_rag_model(model)  # without a generator, the pipeline decides (extract needs only the reader)
        return answer_events(ctx, rag_request(rag, message_texts(messages), sampling))
    llm = ctx.llm(model)
    texts = message_texts(messages)
    tok = llm.tokenizer
    conversation = chat_messages("", checked_messages(texts), tok.accepts_system_role)  # as rag renders a chat
    params = sampling_params(llm, sampling)
    ids = await ctx.run(tok.apply_chat_template, conversation, add_generation_prompt=True, tokenize=True)
    return generate_events(ctx, ids, params)


async def completion_events(
    ctx: HttpContext,
    model: str | None,
    prompt: str | list[str] | list[int],
    sampling: Mapping[str, Any],
    rag: RagOptions | None,
) -> AsyncIterator[Event]:
    """The events of a text completion (a prompt string, or its token ids); with RAG the prompt is the question."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    if rag is not None:
        ctx.check_rag_model(model)  # as for chat
        if not isinstance(prompt, str):
            raise ApiError(400, "a RAG completion needs the question as text", param="prompt")
        return answer_events(ctx, rag_request(rag, [{"role": "user", "content": prompt}], sampling))
    llm = ctx.llm(model)
    params = sampling_params(llm, sampling)
    if isinstance(prompt, str):
        add_bos = llm.tokenizer.bos_id is not None
        ids = await ctx.run(llm.tokenizer.encode, prompt, add_bos=add_bos)
    else:
        ids = list(prompt)
    return generate_events(ctx, ids, params)


def sampling_params(llm: AsyncLLM, sampling: Mapping[str, Any]) -> SamplingParams:
    """The request's sampling over the checkpoint's defaults (generation_config.json, as vLLM applies them when a
    request sets no sampling field), over SamplingParams' own."""
    return SamplingParams(**{**llm.generation_config.defaults_for(sampling), **sampling})


async def generate_events(ctx: HttpContext, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Event]:
    assert ctx.generator is not None
    with ctx.admission.ticket() as ticket:  # TooManyRequestsError (429) before anything is generated
        llm = AdmittedGenerator(ctx.generator, ticket)
        yield Start([])
        # aclosing: closing this stream early closes the engine's at once, which aborts the request
        async with aclosing(llm.generate(prompt_ids, params, uuid.uuid4().hex)) as deltas:
            async for d in deltas:
                if d.text_delta or d.token_ids:
                    yield Piece(d.text_delta, list(d.token_ids), d.logprobs)
                if d.finished:
                    ctx.limits.charge_tokens(current_principal(), d.num_prompt_tokens + d.num_generated_tokens)
                    yield End(d.finish_reason or "stop", d.num_prompt_tokens, d.num_generated_tokens)


async def answer_events(ctx: HttpContext, request: AnswerRequest) -> AsyncIterator[Event]:
    """rag's pipeline (the same as gRPC's Ask/Chat), through the same admission control and token budget. Without
    a generator the pipeline answers extract requests (with the reader) and refuses the others."""
    with ctx.admission.ticket() as ticket:
        llm = AdmittedGenerator(ctx.generator, ticket) if ctx.generator is not None else None
        pipeline = RagPipeline(ctx.collections, llm, ctx.run, ctx.grounding, reader=ctx.reader)
        async with aclosing(pipeline.answer(request)) as answer:
            async for event in answer:
                if isinstance(event, Context):
                    yield Start(list(event.passages))
                elif isinstance(event, TextDelta):
                    yield Piece(event.text)
                else:
                    assert isinstance(event, AnswerEnd), event
                    ctx.metrics.observe_answer(event)
                    ctx.limits.charge_tokens(current_principal(), event.prompt_tokens + event.completion_tokens)
                    yield End(event.finish_reason, event.prompt_tokens, event.completion_tokens)


class PrimedStream:
    """An event stream pulled up to its first Piece (or End), so that every error a request can meet before it
    generates has been raised by the time the response starts; iterate it for the rest, from the first event.
    aclose() ends it early (aborting its request)."""

    def __init__(self, events: AsyncIterator[Event]):
        self.events = events
        self.head: list[Event] = []

    async def prime(self) -> PrimedStream:
        async for event in self.events:
            self.head.append(event)
            if not isinstance(event, Start):
                break
        return self

    async def __aiter__(self) -> AsyncIterator[Event]:
        while self.head:
            yield self.head.pop(0)
        async for event in self.events:
            yield event

    async def aclose(self) -> None:
        await self.events.aclose()
