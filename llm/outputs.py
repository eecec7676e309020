"""What the engine hands back: finished results (`RequestOutput` of n `CompletionOutput`s, with `RequestMetrics`) and
streaming increments (`StreamDelta`). Plain dataclasses, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestMetrics:
    """Per-request timings, seconds on time.monotonic() (differences only are meaningful)."""

    arrival_time: float
    first_scheduled_time: float | None = None  # first step that ran any of its tokens
    first_token_time: float | None = None  # first generated token of any of its samples
    finished_time: float | None = None
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0  # over all n samples
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache on first admission
    num_preemptions: int = 0
    inter_token_latencies: list[float] = field(default_factory=list, repr=False)  # gaps between tokens of sample 0

    @property
    def queue_time(self) -> float | None:
        """Arrival -> first scheduled (waiting in the queue)."""
        return None if self.first_scheduled_time is None else self.first_scheduled_time - self.arrival_time

    @property
    def ttft(self) -> float | None:
        """Time to first token: arrival -> first generated token."""
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def e2e_latency(self) -> float | None:
        return None if self.finished_time is None else self.finished_time - self.arrival_time

    @property
    def mean_itl(self) -> float | None:
        """Mean inter-token latency (time per output token after the first) of sample 0."""
        itl = self.inter_token_latencies
        return sum(itl) / len(itl) if itl else None

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "queue_time_s": self.queue_time,
            "ttft_s": self.ttft,
            "mean_itl_s": self.mean_itl,
            "e2e_latency_s": self.e2e_latency,
            "num_prompt_tokens": self.num_prompt_tokens,
            "num_generated_tokens": self.num_generated_tokens,
            "num_cached_tokens": self.num_cached_tokens,
            "num_preemptions": self.num_preemptions,
        }


@dataclass
class CompletionOutput:
    """One of the n samples of a request."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop" (eos, stop token or stop string), "length", "abort"; None while running
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it (None for eos/length)
    logprobs: list[dict[int, float]] | None = None  # per token: {sampled id: logprob, top-N ids: logprob}
    cumulative_logprob: float | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids


@dataclass
class StreamDelta:
    """New output of one sample since the previous delta (AsyncLLM.generate yields these)."""

    request_id: str
    index: int  # which of the n samples
    text_delta: str
    token_ids: list[int]  # new token ids
    finished: bool  # this sample is done (for n = 1: the last delta of the request)
    finish_reason: str | None
    num_prompt_tokens: int
    num_generated_tokens: int  # of this sample so far
    ttft_s: float | None  # arrival -> first token of the request (set once known)
    logprobs: list[dict[int, float]] | None = None  # of the new tokens, when requested
    stop_reason: str | int | None = None
    metrics: RequestMetrics | None = None  # on the final delta of the request
