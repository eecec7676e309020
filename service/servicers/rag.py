"""pqrag.v1.Rag: Ask and Chat, streamed from rag's answer pipeline (Context -> AnswerDelta* -> AnswerEnd).

Nothing is streamed before the answer has started: the Context (the citations) is held back until the first text
delta (or the end) comes from the generator (or from the extractive reader, for grounding extract), so a refusal
(admission control, the engine's full queue, a prompt that does not fit, a dead engine) reaches the client as a
status code before any message, never after the citations. Admission (service.admission) counts the answer as
waiting until then.

When the client cancels or its deadline passes, grpc.aio cancels this handler's task; the cancellation reaches the
engine stream inside the pipeline, whose cleanup aborts the request and frees its KV blocks at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from pqrag.v1 import rag_pb2, rag_pb2_grpc
from rag.pipeline import AnswerEnd, Context, RagPipeline
from rag.request import AnswerRequest
from service import convert
from service.admission import Admission, AdmittedGenerator
from service.auth import current_principal
from service.ratelimit import RateLimits
from service.servicers.base import Servicer
from service.status import rpc

if TYPE_CHECKING:
    from llm.async_engine import AsyncLLM
    from rag.reader import Reader


class RagServicer(Servicer, rag_pb2_grpc.RagServicer):
    def __init__(
        self,
        *args,
        generator: AsyncLLM | None,
        reader: Reader | None = None,
        admission: Admission | None = None,
        limits: RateLimits | None = None,
        grounding: str | None = None,
    ):
        super().__init__(*args)
        self.generator = generator  # None: the pipeline answers extract requests only (with the reader)
        self.reader = reader  # the extractive reader of extract answers; None: they are refused
        self.grounding = grounding  # the default of requests that name none (None: the model's)
        self.admission = admission or Admission()
        self.limits = limits or RateLimits()

    async def _answer(self, request: AnswerRequest) -> AsyncIterator[rag_pb2.AskResponse]:
        with self.admission.ticket() as ticket:  # ResourceExhaustedError: nothing was sent
            llm = AdmittedGenerator(self.generator, ticket) if self.generator is not None else None
            pipeline = RagPipeline(self.collections, llm, self.run, self.grounding, reader=self.reader)
            held: Context | None = None
            async for event in pipeline.answer(request):
                if isinstance(event, Context):
                    held = event  # until the answer has started
                    continue
                if held is not None:
                    yield convert.answer_event_to_proto(held)
                    held = None
                if isinstance(event, AnswerEnd):
                    self.metrics.observe_answer(event)
                    self.limits.charge_tokens(current_principal(), event.prompt_tokens + event.completion_tokens)
                yield convert.answer_event_to_proto(event)

    @rpc("Ask")
    async def Ask(self, request, context):
        async for message in self._answer(convert.ask_request_from_proto(request)):
            yield message

    @rpc("Chat")
    async def Chat(self, request, context):
        async for message in self._answer(convert.chat_request_from_proto(request)):
            yield message
