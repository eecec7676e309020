"""Sampling: the per-request `SamplingParams` (vLLM's names and defaults) and the batched `Sampler`.

The sampler turns the logits of B sequences into B next tokens in one pass of (B, V) tensor ops: penalties,
min_tokens masking, temperature, top-k, top-p, min-p, then greedy argmax or a random draw. Rows differ only in
their parameter values (tensors of shape (B,)), never in the code path, so a mixed batch costs the same as a
uniform one. The only Python loop is over seeded rows, which draw their noise from their own torch.Generator: a
seeded request then samples the same tokens whatever else shares its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from common.checks import is_int, non_negative_int, optional_positive_int, positive_int
from common.errors import InvalidArgumentError
from llm.grounding import QuoteIndex

_EPS = 1e-5  # temperatures below this are greedy (dividing by ~0 would overflow)


@dataclass
class SamplingParams:
    """How to generate for one request (vLLM-compatible names; defaults as vLLM's)."""

    n: int = 1  # parallel samples of the same prompt (they share the prompt's KV blocks, copy-on-write)
    max_tokens: int | None = 16  # new tokens at most; None = up to the model's context length
    min_tokens: int = 0  # eos / stop tokens / stop strings are suppressed until this many tokens exist
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus: smallest set of tokens whose probability reaches top_p (1 = off)
    top_k: int = 0  # keep the k most likely tokens (0 or -1 = off)
    min_p: float = 0.0  # drop tokens less likely than min_p * p(most likely token) (0 = off)
    repetition_penalty: float = 1.0  # >1 discourages tokens seen in prompt or output (CTRL-style divide/multiply)
    presence_penalty: float = 0.0  # subtracted once from tokens present in the output (OpenAI semantics)
    frequency_penalty: float = 0.0  # subtracted per occurrence in the output
    seed: int | None = None  # per-request generator: same seed, same tokens, whatever the batch
    stop: list[str] | str | None = None  # stop strings; the text is cut before the first one found
    stop_token_ids: list[int] | None = None  # extra token ids that end generation (kept in token_ids)
    ignore_eos: bool = False  # keep going past eos (benchmarks)
    logprobs: int | None = None  # return the sampled token's logprob and the top-N logprobs per step
    skip_special_tokens: bool = True  # for detokenization
    # Grounded decoding (llm/grounding.py): each sequence samples only the tokens its state allows; None = free.
    constraint: QuoteIndex | None = None

    stop_list: list[str] = field(init=False, repr=False, default_factory=list)  # normalised `stop`

    def __post_init__(self) -> None:
        """Validates user input once, where a request enters the engine (InvalidArgumentError names the field)."""

        def bad(msg: str) -> None:
            raise InvalidArgumentError(f"SamplingParams: {msg}")

        self.n = positive_int(self.n, "SamplingParams.n")
        self.max_tokens = optional_positive_int(self.max_tokens, "SamplingParams.max_tokens")
        self.min_tokens = non_negative_int(self.min_tokens, "SamplingParams.min_tokens")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            bad(f"min_tokens={self.min_tokens} must be <= max_tokens={self.max_tokens}")
        if not 0.0 <= self.temperature < float("inf"):  # also rejects NaN
            bad(f"temperature must be >= 0 and finite, got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            bad(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not is_int(self.top_k) or self.top_k < -1:
            bad(f"top_k must be an int, -1 or 0 (off) or >= 1, got {self.top_k!r}")
        if not 0.0 <= self.min_p <= 1.0:
            bad(f"min_p must be in [0, 1], got {self.min_p!r}")
        if not 0.0 < self.repetition_penalty < float("inf"):
            bad(f"repetition_penalty must be > 0 and finite, got {self.repetition_penalty!r}")
        if not -2.0 <= self.presence_penalty <= 2.0:
            bad(f"presence_penalty must be in [-2, 2], got {self.presence_penalty!r}")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            bad(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty!r}")
        if self.seed is not None:
            if not is_int(self.seed):
                bad(f"seed must be an int or None, got {self.seed!r}")
            self.seed = int(self.seed)
        if self.logprobs is not None:
            self.logprobs = non_negative_int(self.logprobs, "SamplingParams.logprobs")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if any(not isinstance(s, str) or not s for s in stop):
            bad(f"stop must be non-empty strings, got {self.stop!r}")
        self.stop_list = stop
        if self.stop_token_ids is not None:
            if any(not is_int(t) or t < 0 for t in self.stop_token_ids):
                bad(f"stop_token_ids must be non-negative ints, got {self.stop_token_ids!r}")
            self.stop_token_ids = [int(t) for t in self.stop_token_ids]
        if self.constraint is not None and not isinstance(self.constraint, QuoteIndex):
            bad(f"constraint must be a llm.grounding.QuoteIndex or None, got {type(self.constraint).__name__}")

    @property
    def greedy(self) -> bool:
        return self.temperature < _EPS

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def child(self, index: int) -> SamplingParams:
        """Params of parallel sample `index` (n > 1): n = 1, and a distinct seed so the samples differ."""
        import dataclasses

        seed = None if self.seed is None else self.seed + index
        return dataclasses.replace(self, n=1, seed=seed, stop=list(self.stop_list))


# ---- batch inputs ------------------------------------------------------------------------------------------------
@dataclass
class SamplingBatch:
    """Everything the sampler needs for B rows, as tensors on the logits' device (built by `make_batch`)."""

    temperature: torch.Tensor  # (B,) float32; 1.0 for greedy rows (never divides by 0)
    greedy: torch.Tensor  # (B,) bool
    top_k: torch.Tensor  # (B,) int64, V when off
    top_p: torch.Tensor  # (B,) float32
    min_p: torch.Tensor  # (B,) float32
    generators: list[torch.Generator | None]  # per row; None = the shared default generator
    # Penalties (None when no row has any): token ids padded with V, which is dropped after the scatter.
    prompt_ids: torch.Tensor | None  # (B, Lp) int64
    output_ids: torch.Tensor | None  # (B, Lo) int64
    repetition_penalty: torch.Tensor | None  # (B,) float32
    presence_penalty: torch.Tensor | None  # (B,) float32
    frequency_penalty: torch.Tensor | None  # (B,) float32
    banned: tuple[torch.Tensor, torch.Tensor] | None  # (rows, token ids) set to -inf (min_tokens); None if none
    # Constrained rows (grounding) and their allowed (rows, token ids): all other tokens of those rows are -inf.
    allowed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    max_logprobs: int  # top-N logprobs to return (0 = only the sampled token's); -1 = none wanted
    all_greedy: bool
    any_top_k: bool
    any_top_p: bool
    any_min_p: bool


def _pad(rows: Sequence[Sequence[int]], pad: int, device: torch.device | str) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), pad, dtype=torch.int64)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.as_tensor(r, dtype=torch.int64)
    return out.to(device)


def make_batch(
    params: Sequence[SamplingParams],
    vocab_size: int,
    prompt_ids: Sequence[Sequence[int]] | None = None,
    output_ids: Sequence[Sequence[int]] | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
    banned_ids: Sequence[Sequence[int]] | None = None,
    device: torch.device | str = "cpu",
    allowed_ids: Sequence[Sequence[int] | None] | None = None,
) -> SamplingBatch:
    """Per-row params -> tensors. prompt_ids/output_ids are needed only for penalties, banned_ids[i] are token ids
    row i must not sample now (the engine passes eos/stop ids while a row is below min_tokens), allowed_ids[i] the
    only ones row i may sample (a constrained row: never empty), None for a free row."""
    B, V = len(params), vocab_size
    greedy = [p.greedy for p in params]
    f32 = dict(dtype=torch.float32, device=device)
    any_pen = any(p.has_penalties for p in params)
    if any_pen and (prompt_ids is None or output_ids is None):
        raise ValueError("penalties need prompt_ids and output_ids")
    banned = None
    if banned_ids is not None and any(banned_ids):
        rows = [i for i, ids in enumerate(banned_ids) for _ in ids]
        cols = [t for ids in banned_ids for t in ids]
        banned = (
            torch.tensor(rows, dtype=torch.int64, device=device),
            torch.tensor(cols, dtype=torch.int64, device=device),
        )
    allowed = None
    if allowed_ids is not None and any(ids is not None for ids in allowed_ids):
        i64 = dict(dtype=torch.int64, device=device)
        assert all(ids is None or len(ids) > 0 for ids in allowed_ids), "a constrained row needs an allowed token"
        allowed = (
            torch.tensor([i for i, ids in enumerate(allowed_ids) if ids is not None], **i64),
            torch.tensor([i for i, ids in enumerate(allowed_ids) for _ in ids or ()], **i64),
            torch.tensor([t for ids in allowed_ids for t in ids or ()], **i64),
        )
    wanted = [p.logprobs for p in params if p.logprobs is not None]
    return SamplingBatch(
        temperature=torch.tensor([1.0 if g else p.temperature for g, p in zip(greedy, params)], **f32),
        greedy=torch.tensor(greedy, dtype=torch.bool, device=device),
        top_k=torch.tensor([p.top_k if p.top_k > 0 else V for p in params], dtype=torch.int64, device=device),
        top_p=torch.tensor([p.top_p for p in params], **f32),
        min_p=torch.tensor([p.min_p for p in params], **f32),
        generators=list(generators) if generators is not None else [None] * B,
        prompt_ids=_pad(prompt_ids, V, device) if any_pen else None,  # type: ignore[arg-type]
        output_ids=_pad(output_ids, V, device) if any_pen else None,  # type: ignore[arg-type]
        repetition_penalty=torch.tensor([p.repetition_penalty for p in params], **f32) if any_pen else None,
        presence_penalty=torch.tensor([p.presence_penalty for p in params], **f32) if any_pen else None,
        frequency_penalty=torch.tensor([p.frequency_penalty for p in params], **f32) if any_pen else None,
        banned=banned,
        allowed=allowed,
        max_logprobs=max(wanted) if wanted else -1,
        all_greedy=all(greedy),
        any_top_k=any(p.top_k > 0 and p.top_k < V for p in params),
        any_top_p=any(p.top_p < 1.0 for p in params),
        any_min_p=any(p.min_p > 0.0 for p in params),
    )


# ---- pure logits transforms (each (B, V) -> (B, V), vectorised over rows) ------------------------------------------
def token_counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """ids (B, L) padded with vocab_size -> counts (B, V) int64 (the pad column is dropped)."""
    counts = torch.zeros((ids.shape[0], vocab_size + 1), dtype=torch.int64, device=ids.device)
    counts.scatter_add_(1, ids, torch.ones_like(ids))
    return counts[:, :vocab_size]


def apply_penalties(
    logits: torch.Tensor,
    prompt_ids: torch.Tensor,
    output_ids: torch.Tensor,
    repetition: torch.Tensor,
    presence: torch.Tensor,
    frequency: torch.Tensor,
) -> torch.Tensor:
    """Repetition penalty over prompt+output tokens (positive logits divided, negative multiplied, as in CTRL and
    vLLM), then OpenAI presence/frequency penalties over output tokens only."""
    V = logits.shape[1]
    out_counts = token_counts(output_ids, V)  # (B, V)
    seen = (token_counts(prompt_ids, V) > 0) | (out_counts > 0)
    rep = repetition[:, None]
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalised, logits)
    logits = logits - frequency[:, None] * out_counts.to(logits.dtype)
    return logits - presence[:, None] * (out_counts > 0).to(logits.dtype)


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None) -> torch.Tensor:
    """Mask (to -inf) all but each row's top_k logits and its nucleus of mass top_p; one sort for both.
    top_k (B,) int64 with V = off; top_p (B,) with 1.0 = off. The most likely token always survives."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    V = logits.shape[1]
    if top_k is not None:
        ranks = torch.arange(V, device=logits.device)[None, :]
        sorted_logits = sorted_logits.masked_fill(ranks >= top_k[:, None], float("-inf"))
    if top_p is not None:
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the strictly more likely tokens
        drop = mass_before >= top_p[:, None]  # keep tokens until the kept mass reaches top_p
        drop[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p * max probability (min_p (B,), 0 = off)."""
    probs = logits.softmax(dim=-1)
    threshold = min_p[:, None] * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, float("-inf"))


def apply_allowed(logits: torch.Tensor, allowed: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """-inf everywhere in the constrained rows except at their allowed (row, token id) pairs; one scatter for the
    whole batch, free rows untouched."""
    constrained, rows, cols = allowed
    masked = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    masked[constrained] = True
    masked[rows, cols] = False
    return logits.masked_fill(masked, float("-inf"))


def random_sample(probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One draw per row from probs (B, V): argmax(p / E) with E ~ Exp(1) is a sample from p (the exponential race;
    no cumsum/searchsorted, and each row's noise comes from its own generator when it has one)."""
    q = torch.empty_like(probs)
    seeded = [i for i, g in enumerate(generators) if g is not None]
    if len(seeded) < len(generators):
        q.exponential_()  # shared default generator for the unseeded rows (seeded rows are overwritten)
    for i in seeded:
        q[i].exponential_(generator=generators[i])
    return probs.div(q).argmax(dim=-1)


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # (B,) int64
    logprobs: torch.Tensor | None  # (B,) float32 logprob of the sampled token (raw model distribution)
    top_logprobs: torch.Tensor | None  # (B, N) float32
    top_token_ids: torch.Tensor | None  # (B, N) int64


class Sampler:
    """Stateless: `sampler(logits (B, V), batch) -> SamplerOutput`. Returned logprobs are of the raw model
    distribution (before penalties and temperature), as vLLM's default."""

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        logits = logits.float()
        raw = logits
        if batch.prompt_ids is not None:
            logits = apply_penalties(
                logits,
                batch.prompt_ids,
                batch.output_ids,
                batch.repetition_penalty,  # type: ignore[arg-type]
                batch.presence_penalty,
                batch.frequency_penalty,  # type: ignore[arg-type]
            )
        if batch.banned is not None:
            logits = logits.index_put(batch.banned, torch.tensor(float("-inf"), device=logits.device))
        if batch.allowed is not None:
            logits = apply_allowed(logits, batch.allowed)
        greedy_ids = logits.argmax(dim=-1)
        if batch.all_greedy:
            ids = greedy_ids
        else:
            logits = logits / batch.temperature[:, None]
            if batch.any_top_k or batch.any_top_p:
                logits = apply_top_k_top_p(
                    logits, batch.top_k if batch.any_top_k else None, batch.top_p if batch.any_top_p else None
                )
            if batch.any_min_p:
                logits = apply_min_p(logits, batch.min_p)
            sampled = random_sample(logits.softmax(dim=-1), batch.generators)
            ids = torch.where(batch.greedy, greedy_ids, sampled)
        if batch.max_logprobs < 0:
            return SamplerOutput(ids, None, None, None)
        logp = raw.log_softmax(dim=-1)
        chosen = logp.gather(1, ids[:, None])[:, 0]
        top_lp, top_ids = logp.topk(batch.max_logprobs, dim=-1) if batch.max_logprobs > 0 else (None, None)
        return SamplerOutput(ids, chosen, top_lp, top_ids)
