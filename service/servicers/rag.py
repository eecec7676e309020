"""pqrag.v1.Rag: Ask and Chat, streamed from rag's answer pipeline (Context -> AnswerDelta* -> AnswerEnd).

When the client cancels, grpc.aio cancels this handler's task; the cancellation reaches the engine stream inside
the pipeline, whose cleanup aborts the request and frees its KV blocks at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from pqrag.v1 import rag_pb2, rag_pb2_grpc
from rag.pipeline import AnswerEnd, RagPipeline
from rag.request import AnswerRequest
from service import convert
from service.servicers.base import Servicer
from service.status import rpc

if TYPE_CHECKING:
    from llm.async_engine import AsyncLLM


class RagServicer(Servicer, rag_pb2_grpc.RagServicer):
    def __init__(self, *args, generator: AsyncLLM | None):
        super().__init__(*args)
        self.pipeline = RagPipeline(self.collections, generator, self.run)

    async def _answer(self, request: AnswerRequest) -> AsyncIterator[rag_pb2.AskResponse]:
        async for event in self.pipeline.answer(request):
            if isinstance(event, AnswerEnd):
                seconds = (event.retrieval_ms / 1e3, event.time_to_first_token_ms / 1e3, event.total_ms / 1e3)
                self.metrics.observe_generation(*seconds, event.completion_tokens)
            yield convert.answer_event_to_proto(event)

    @rpc("Ask")
    async def Ask(self, request, context):
        async for message in self._answer(convert.ask_request_from_proto(request)):
            yield message

    @rpc("Chat")
    async def Chat(self, request, context):
        async for message in self._answer(convert.chat_request_from_proto(request)):
            yield message
