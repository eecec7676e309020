"""Admission control for answers (`pqrag serve --max-waiting-requests N --max-waiting-tokens N`), like vLLM's
queue limits: a request over a limit gets RESOURCE_EXHAUSTED (HTTP 429) before anything is streamed.

    admission = Admission(max_waiting_requests=64, max_waiting_tokens=65536)
    with admission.ticket() as ticket:                 # TooManyRequestsError: too many answers waiting
        llm = AdmittedGenerator(generator, ticket)     # what this request's RagPipeline generates with
        ...                                            # generate() reserves prompt + max_tokens (or refuses)

An answer waits from its arrival (retrieval, prompt building, the engine's queue) until its first token: that is
what the limits count. Its tokens (prompt + the most it may generate) are known once the prompt is built, so the
token limit is checked when the pipeline hands the prompt to the generator; the servicer holds the Context event
back until the first token or an error, so a refusal still comes before anything is streamed. A request alone in
the queue is always admitted, whatever its size (else it could never run).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from common.errors import TooManyRequestsError

if TYPE_CHECKING:
    from llm.async_engine import AsyncLLM
    from llm.outputs import StreamDelta
    from llm.sampler import SamplingParams


class Admission:
    def __init__(self, max_waiting_requests: int | None = None, max_waiting_tokens: int | None = None):
        self.max_waiting_requests = max_waiting_requests
        self.max_waiting_tokens = max_waiting_tokens
        self.waiting_requests = 0
        self.waiting_tokens = 0
        self._lock = threading.Lock()

    def ticket(self) -> Ticket:
        """Admit one more waiting answer; TooManyRequestsError when max_waiting_requests are waiting already."""
        with self._lock:
            if self.max_waiting_requests is not None and self.waiting_requests >= self.max_waiting_requests:
                raise TooManyRequestsError(
                    f"{self.waiting_requests} answers are waiting to start (the limit is {self.max_waiting_requests}:"
                    " --max-waiting-requests); retry in a moment"
                )
            self.waiting_requests += 1
        return Ticket(self)

    def reserve(self, ticket: Ticket, tokens: int) -> None:
        """Count `tokens` for a waiting ticket; TooManyRequestsError when that would pass max_waiting_tokens while
        other answers wait."""
        with self._lock:
            if not ticket.waiting:
                return
            others = self.waiting_tokens - ticket.tokens
            if self.max_waiting_tokens is not None and others > 0 and others + tokens > self.max_waiting_tokens:
                raise TooManyRequestsError(
                    f"answers waiting to start hold {others} tokens; this one needs {tokens} more and the limit is "
                    f"{self.max_waiting_tokens} (--max-waiting-tokens); retry in a moment"
                )
            self.waiting_tokens += tokens - ticket.tokens
            ticket.tokens = tokens

    def release(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket.waiting:
                ticket.waiting = False
                self.waiting_requests -= 1
                self.waiting_tokens -= ticket.tokens


class Ticket:
    """One answer's place in the waiting line, released at its first token (started) or its end (close)."""

    def __init__(self, admission: Admission):
        self.admission = admission
        self.tokens = 0  # reserved
        self.waiting = True

    def reserve(self, tokens: int) -> None:
        self.admission.reserve(self, tokens)

    def started(self) -> None:
        self.admission.release(self)

    close = started

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AdmittedGenerator:
    """The generator as one request's pipeline sees it: generate() reserves the request's tokens on its ticket
    before queueing the request, and releases the ticket at the first delta. Everything else is the AsyncLLM's."""

    def __init__(self, llm: AsyncLLM, ticket: Ticket):
        self._llm = llm
        self._ticket = ticket

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    async def generate(
        self, prompt_token_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[StreamDelta]:
        n_prompt = len(prompt_token_ids)
        budget = params.max_tokens if params.max_tokens is not None else self._llm.max_model_len - n_prompt
        self._ticket.reserve(n_prompt + max(budget, 0) * params.n)
        async for delta in self._llm.generate(prompt_token_ids, params, request_id):
            self._ticket.started()
            yield delta
