"""The Rag servicer: retrieve in the worker pool, build the prompt, stream the colocated generator's answer.

Colocation: the generator's engine steps in its own thread (llm.async_engine.AsyncLLM); embedding, index search
and prompt tokenization run in the server's worker pool. Neither runs on the gRPC event loop, so a new question's
retrieval never stalls the tokens of answers being generated, and the loop only moves messages.

Stream order per call: Context (citations) -> AnswerDelta* -> AnswerEnd. When the client cancels, grpc.aio
cancels this handler's task; the engine stream's cleanup aborts the request, which frees its KV blocks at once.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from common.errors import InvalidArgumentError, ResourceExhaustedError
from pqrag.v1 import rag_pb2
from service import convert
from service.prompt import build_prompt, conversation_query

MAX_TOP_K = 50
DEFAULT_TOP_K = 5
DEFAULT_MAX_TOKENS = 256
ROLES = ("system", "user", "assistant")


class GeneratorUnavailableError(Exception):
    """This server runs without a generator (pqrag serve --no-generator): FAILED_PRECONDITION."""


@dataclass
class AskQuery:
    collection: str
    messages: list[dict[str, str]]  # the conversation, the last one the user's question
    top_k: int
    filter: dict[str, Any] | None
    params: Any  # llm.sampler.SamplingParams


def sampling_params_from_proto(p: rag_pb2.GenerationParams):
    """GenerationParams -> SamplingParams; SamplingParams validates ranges (ValueError -> INVALID_ARGUMENT)."""
    from llm.sampler import SamplingParams

    # Greedy unless asked otherwise: a grounded answer should not change from one call to the next.
    kw: dict[str, Any] = {
        "max_tokens": p.max_tokens if p.HasField("max_tokens") else DEFAULT_MAX_TOKENS,
        "temperature": 0.0,
    }
    for name in (
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "min_tokens",
        "ignore_eos",
    ):
        if p.HasField(name):
            kw[name] = getattr(p, name)
    if p.stop:
        kw["stop"] = list(p.stop)
    try:
        return SamplingParams(**kw)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"params: {exc}") from exc


def _query(req: rag_pb2.AskRequest | rag_pb2.ChatRequest, messages: list[dict[str, str]]) -> AskQuery:
    """The fields Ask and Chat share (collection, top_k, filter, params), validated."""
    k = req.top_k if req.HasField("top_k") else DEFAULT_TOP_K
    if not 1 <= k <= MAX_TOP_K:
        raise InvalidArgumentError(f"top_k must be between 1 and {MAX_TOP_K}, got {k}")
    return AskQuery(
        collection=convert.require_name(req.collection),
        messages=messages,
        top_k=k,
        filter=convert.struct_to_dict(req.filter) if req.HasField("filter") else None,
        params=sampling_params_from_proto(req.params),
    )


def ask_query_from_proto(req: rag_pb2.AskRequest) -> AskQuery:
    question = req.question.strip()
    if not question:
        raise InvalidArgumentError("question is empty: send the question text in AskRequest.question")
    return _query(req, [{"role": "user", "content": question}])


def chat_query_from_proto(req: rag_pb2.ChatRequest) -> AskQuery:
    if not req.messages:
        raise InvalidArgumentError("messages is empty: send the conversation, the last message the user's")
    messages = []
    for i, m in enumerate(req.messages):
        if m.role not in ROLES:
            raise InvalidArgumentError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {m.role!r}")
        messages.append({"role": m.role, "content": m.content})
    if messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise InvalidArgumentError("the last message must be the user's and hold text")
    return _query(req, messages)


def citation_protos(passages) -> rag_pb2.Context:
    return rag_pb2.Context(
        citations=[
            rag_pb2.Citation(
                number=p.number,
                document_id=p.doc_id,
                chunk_id=int(p.chunk_id),
                score=float(p.score),
                source=p.source or "",
                start=int(p.start),
                end=int(p.end),
                snippet=p.text,
            )
            for p in passages
        ]
    )


async def answer(base, llm, q: AskQuery):
    """The response stream of one question. base: the server's _Base (collections, run, metrics); llm: AsyncLLM."""
    if llm is None:
        raise GeneratorUnavailableError(
            "this server runs without a generator (started with --no-generator); use Search, or start "
            "`pqrag serve --model DIR`"
        )
    from llm.scheduler import QueueFullError

    start = time.perf_counter()
    max_len = llm.config.max_position_embeddings
    if q.params.max_tokens >= max_len:
        raise InvalidArgumentError(
            f"params.max_tokens={q.params.max_tokens} does not fit the model's window of {max_len} tokens "
            f"together with a prompt: ask for fewer tokens"
        )
    coll = await base.run(base.collections.get, q.collection)
    hits = await base.run(coll.search, query=conversation_query(q.messages), k=q.top_k, filter=q.filter)
    retrieval_ms = (time.perf_counter() - start) * 1e3
    try:
        prompt = await base.run(build_prompt, llm.tokenizer, q.messages, hits, max_len, q.params.max_tokens)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from exc
    yield rag_pb2.AskResponse(context=citation_protos(prompt.passages))

    finish_reason, n_out, ttft_ms = "abort", 0, 0.0
    try:
        async for d in llm.generate(prompt.token_ids, q.params, uuid.uuid4().hex):
            n_out = d.num_generated_tokens
            if d.text_delta:
                ttft_ms = ttft_ms or (time.perf_counter() - start) * 1e3
                yield rag_pb2.AskResponse(delta=rag_pb2.AnswerDelta(text=d.text_delta))
            if d.finished:
                finish_reason = d.finish_reason or "stop"
    except QueueFullError as exc:
        raise ResourceExhaustedError(f"the generator is at capacity, retry later ({exc})") from exc
    total_ms = (time.perf_counter() - start) * 1e3
    ttft_ms = ttft_ms or total_ms  # an answer with no text: its first "token" is the end
    base.metrics.observe_generation(retrieval_ms / 1e3, ttft_ms / 1e3, total_ms / 1e3, n_out)
    yield rag_pb2.AskResponse(
        final=rag_pb2.AnswerEnd(
            finish_reason=finish_reason,
            prompt_tokens=len(prompt.token_ids),
            completion_tokens=n_out,
            retrieval_ms=retrieval_ms,
            time_to_first_token_ms=ttft_ms,
            total_ms=total_ms,
        )
    )
