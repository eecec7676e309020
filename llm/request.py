"""Engine-side request state: a `Sequence` is one stream of tokens the scheduler runs (it satisfies kv_cache's
KVRequest protocol); a `RequestGroup` is what the user submitted: a prompt, its SamplingParams and the n parallel
sequences sampling from it (n = 1 for most requests).

A group starts with one sequence. When its prompt has been prefilled, the first n tokens are sampled from the same
logits and n-1 child sequences are forked from it, sharing its KV blocks copy-on-write.
"""

from __future__ import annotations

import enum
import time

import torch

from llm.grounding import QuoteConstraint
from llm.outputs import CompletionOutput, RequestMetrics, RequestOutput
from llm.sampler import SamplingParams
from llm.tokenizer import IncrementalDetokenizer, Tokenizer


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"  # waiting again, KV dropped, will recompute its prompt + output
    FINISHED = "finished"


class Sequence:
    """One token stream. num_computed_tokens counts tokens whose K/V are in the cache; the scheduler runs the rest
    (num_tokens - num_computed_tokens: a prompt chunk, or the single last sampled token of a decode)."""

    def __init__(
        self,
        group: RequestGroup,
        index: int,
        params: SamplingParams,
        tokenizer: Tokenizer | None,
        order: tuple[int, int],
    ):
        self.group = group
        self.index = index
        self.request_id = group.request_id if index == 0 else f"{group.request_id}#{index}"
        self.params = params
        self.order = order  # (admission counter, index): larger = newer, preempted first
        self.prompt_token_ids = group.prompt_token_ids
        self.output_token_ids: list[int] = []
        self._all_token_ids: list[int] = list(group.prompt_token_ids)
        self.num_computed_tokens = 0
        self.status = SequenceStatus.WAITING
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator(device=group.device)
            self.generator.manual_seed(params.seed)
        self.detok: IncrementalDetokenizer | None = (
            tokenizer.detokenizer(params.skip_special_tokens) if tokenizer else None
        )
        self.text = ""  # detokenized output, cut before a stop string once one is found
        self.num_emitted_chars = 0  # streaming: text[:num_emitted_chars] has been handed out
        self.num_emitted_tokens = 0
        self.logprobs: list[dict[int, float]] | None = [] if params.logprobs is not None else None
        # Grounded decoding: this sequence's state, advanced by OutputProcessor.append (None = free decoding).
        self.constraint: QuoteConstraint | None = params.constraint.start() if params.constraint is not None else None
        self.cumulative_logprob = 0.0
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.last_token_time: float | None = None

    # ---- KVRequest protocol -------------------------------------------------------------------------------------
    @property
    def all_token_ids(self) -> list[int]:
        return self._all_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self._all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self._all_token_ids.append(token_id)

    def completion(self) -> CompletionOutput:
        return CompletionOutput(
            index=self.index,
            text=self.text,
            token_ids=list(self.output_token_ids),
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
            logprobs=list(self.logprobs) if self.logprobs is not None else None,
            cumulative_logprob=self.cumulative_logprob if self.logprobs is not None else None,
        )

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request_id!r}, {self.status.value}, computed={self.num_computed_tokens}, "
            f"tokens={self.num_tokens})"
        )


class RequestGroup:
    """A submitted request: prompt, params, its n sequences and its metrics."""

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        prompt: str | None = None,
        arrival_time: float | None = None,
        device: torch.device | str = "cpu",
        max_tokens: int | None = None,
    ):
        self.request_id = request_id
        self.max_tokens = max_tokens if max_tokens is not None else params.max_tokens  # resolved by the engine
        self.prompt = prompt
        self.prompt_token_ids = list(prompt_token_ids)
        self.params = params
        self.device = device
        self.metrics = RequestMetrics(
            arrival_time=time.monotonic() if arrival_time is None else arrival_time,
            num_prompt_tokens=len(prompt_token_ids),
        )
        self.seqs: list[Sequence] = []
        self.forked = params.n == 1  # n > 1: the children are created once the prompt is prefilled

    @property
    def finished(self) -> bool:
        return self.forked and all(s.finished for s in self.seqs)

    def output(self) -> RequestOutput:
        outs = sorted((s.completion() for s in self.seqs), key=lambda c: c.index)
        return RequestOutput(
            self.request_id, self.prompt, list(self.prompt_token_ids), outs, self.finished, self.metrics
        )
