"""The answer pipeline: retrieve, build the prompt, stream the colocated generator's answer as domain events.

Colocation: the generator's engine steps in its own thread (llm.async_engine.AsyncLLM); embedding, index search
and prompt tokenization run through the caller's `run` (the server's worker pool). Neither runs on the event
loop, so a new question's retrieval never stalls the tokens of answers being generated, and the loop only moves
messages.

Event order per answer: Context (the numbered passages) -> TextDelta* -> AnswerEnd. When the consumer stops early
(a client cancelled: its task is cancelled, or the generator is closed), the engine stream's cleanup aborts the
request, which frees its KV blocks at once.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common.errors import FailedPreconditionError
from rag.passages import Passage, merge_hits, numbered
from rag.prompt import NO_ANSWER, build_prompt, conversation_query
from rag.request import AnswerRequest, check_grounding

if TYPE_CHECKING:
    from llm.async_engine import AsyncLLM
    from llm.grounding import QuoteIndex
    from rag.reader import Reader
    from retrieval import Collections

# run(fn, *args, **kwargs) -> the awaited result of fn(*args, **kwargs), run off the event loop.
Run = Callable[..., Awaitable[Any]]


class GeneratorUnavailableError(FailedPreconditionError):
    """This server runs without a generator (pqrag serve --no-generator)."""


@dataclass(frozen=True)
class Context:
    passages: list[Passage]  # exactly those in the prompt, numbered 1..n: the citations


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class AnswerEnd:
    finish_reason: str  # "stop" (end of answer or a stop string), "length" (max_tokens) or "abort"
    prompt_tokens: int
    completion_tokens: int
    retrieval_ms: float  # request start -> passages found
    time_to_first_token_ms: float  # request start -> first answer text (the end, for an answer with no text)
    total_ms: float
    grounding: str = "free"  # how it was answered: "free" | "quote" | "extract"
    declined: bool = False  # the answer is the no-answer sentence (rag.prompt.NO_ANSWER)


AnswerEvent = Context | TextDelta | AnswerEnd


class ReaderUnavailableError(FailedPreconditionError):
    """An extract answer was asked of a server without a reader (pqrag serve --reader none)."""


class RagPipeline:
    """Answers AnswerRequests from `collections` with `generator` (None: only extract answers) and `reader` (the
    extractive reader, rag/reader.py; None: no extract answers). grounding: the server's default for requests that
    name none (None: the model's own, from its generation_config.json)."""

    def __init__(
        self,
        collections: Collections,
        generator: AsyncLLM | None,
        run: Run,
        grounding: str | None = None,
        reader: Reader | None = None,
    ):
        self.collections = collections
        self.generator = generator
        self.run = run
        self.grounding = check_grounding(grounding)
        self.reader = reader

    def grounding_for(self, request: AnswerRequest, collection: str | None, model: str | None) -> str:
        """The request's grounding, else the collection's, else the server's, else the model's, else free. A
        model's default of extract falls back to quote on a server without a reader (a choice a caller, collection
        or server made is kept: answering it is an error there); on a server without a generator, extract."""
        chosen = request.grounding or collection or self.grounding
        if not chosen and model == "extract" and self.reader is None:
            return "quote"
        if not chosen and self.generator is None and self.reader is not None:
            return "extract"  # a server without a generator (--no-generator) answers with its reader
        return chosen or model or "free"

    async def answer(self, request: AnswerRequest) -> AsyncIterator[AnswerEvent]:
        llm = self.generator
        if llm is None and self.reader is None:
            raise GeneratorUnavailableError(
                "this server runs without a generator (started with --no-generator); use Search, or start "
                "`pqrag serve --model DIR`"
            )
        start = time.perf_counter()
        coll = await self.run(self.collections.get, request.collection)
        config = coll.config  # read once: grounding and thresholds from one config, whatever an update swaps in
        grounding = self.grounding_for(
            request, config.grounding, llm.generation_config.grounding if llm is not None else None
        )
        if grounding == "extract" and self.reader is None:
            raise ReaderUnavailableError(
                "grounding 'extract' needs the extractive reader, and this server runs without one (started with "
                "--reader none); ask with grounding 'quote' or 'free', or start `pqrag serve --reader DIR`"
            )
        if grounding != "extract" and llm is None:
            raise GeneratorUnavailableError(
                f"grounding {grounding!r} needs a generator, and this server runs without one (started with "
                "--no-generator); ask with grounding 'extract', use Search, or start `pqrag serve --model DIR`"
            )
        query = conversation_query(request.messages)
        found = await self.run(
            coll.search, query=query, k=request.num_passages, filter=request.filter, mode=request.mode, **request.fusion
        )
        retrieval_ms = (time.perf_counter() - start) * 1e3
        # nothing stored is about it: decline, whatever would answer
        if off_topic(found.nearest_score, config.min_similarity):
            for event in declined(found.hits, grounding, start, retrieval_ms):
                yield event
            return
        if grounding == "extract":
            async for event in self._extract(query, found.hits, config.reader_threshold, start, retrieval_ms):
                yield event
            return
        assert llm is not None
        params = request.params_with(llm.generation_config)  # the model's default sampling if the caller set none
        prompt = await self.run(
            build_prompt, llm.tokenizer, request.messages, found.hits, llm.max_model_len, params.max_tokens
        )
        quote = grounding == "quote"
        if quote:  # the answer may only quote the passages (llm/grounding.py); built off the loop
            index = await self.run(quote_index, llm.tokenizer, prompt.passages)
            params = dataclasses.replace(params, constraint=index)
        yield Context(prompt.passages)

        finish_reason, n_out, ttft_ms, said = "abort", 0, 0.0, []
        async for d in llm.generate(prompt.token_ids, params, uuid.uuid4().hex):
            n_out = d.num_generated_tokens
            text = d.text_delta.lstrip() if quote and not ttft_ms else d.text_delta  # a quote's leading space
            if text:
                ttft_ms = ttft_ms or (time.perf_counter() - start) * 1e3
                said.append(text)
                yield TextDelta(text)
            if d.finished:
                finish_reason = d.finish_reason or "stop"
        total_ms = (time.perf_counter() - start) * 1e3
        yield AnswerEnd(
            finish_reason=finish_reason,
            prompt_tokens=len(prompt.token_ids),
            completion_tokens=n_out,
            retrieval_ms=retrieval_ms,
            time_to_first_token_ms=ttft_ms or total_ms,
            total_ms=total_ms,
            grounding=grounding,
            declined="".join(said).strip() == NO_ANSWER,
        )

    async def _extract(
        self, query: str, hits, threshold: float | None, start: float, retrieval_ms: float
    ) -> AsyncIterator[AnswerEvent]:
        """The extract answer: the reader's best span over every retrieved passage (no window to fit), cited, or
        NO_ANSWER below `threshold` (the collection's reader_threshold; None: the reader's own); one TextDelta. No
        tokens are generated (prompt and completion tokens: 0)."""
        assert self.reader is not None
        passages = numbered(merge_hits(hits))
        yield Context(passages)
        text = await self.run(extract_answer, self.reader, query, passages, threshold)
        ttft_ms = (time.perf_counter() - start) * 1e3
        yield TextDelta(text)
        yield AnswerEnd(
            finish_reason="stop",
            prompt_tokens=0,
            completion_tokens=0,
            retrieval_ms=retrieval_ms,
            time_to_first_token_ms=ttft_ms,
            total_ms=(time.perf_counter() - start) * 1e3,
            grounding="extract",
            declined=text == NO_ANSWER,
        )


def off_topic(nearest_score: float | None, min_similarity: float | None) -> bool:
    """Whether a question is declined before any reading or generating: a cut is set (CollectionConfig.
    min_similarity) and the collection's nearest chunk to it (SearchResult.nearest_score) is below it. A search that
    measured no dense score (lexical) cannot say how far the question is, so it never declines; an empty collection
    is left to the answerer (which declines on nothing to read)."""
    return min_similarity is not None and nearest_score is not None and nearest_score < min_similarity


def declined(hits, grounding: str, start: float, retrieval_ms: float) -> list[AnswerEvent]:
    """The answer to an off-topic question (off_topic): the passages found, cited as usual so the
    caller sees how far they were, and the no-answer sentence; nothing read or generated."""
    total_ms = (time.perf_counter() - start) * 1e3
    return [
        Context(numbered(merge_hits(hits))),
        TextDelta(NO_ANSWER),
        AnswerEnd("stop", 0, 0, retrieval_ms, total_ms, total_ms, grounding=grounding, declined=True),
    ]


def extract_answer(reader: Reader, question: str, passages: list[Passage], threshold: float | None = None) -> str:
    """An extract answer's text: the reader's span followed by the number of its passage, or NO_ANSWER (below
    `threshold`, else the reader's null_threshold)."""
    found = reader.answer(question, [p.text for p in passages], threshold)
    return f"{found.text} [{passages[found.passage].number}]" if found is not None else NO_ANSWER


def quote_index(tokenizer: Any, passages: list[Passage]) -> QuoteIndex:
    """The quote constraint of an answer over these numbered passages, NO_ANSWER its one uncited answer."""
    from llm.grounding import QuoteIndex

    return QuoteIndex(tokenizer, [(p.number, p.text) for p in passages], refusal=NO_ANSWER)
