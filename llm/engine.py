"""The engine loop: scheduler + paged KV cache + model runner + sampler + output processor, one step at a time.

    LLMEngine.step():  Scheduler.schedule (which sequences run how many tokens)
                       -> ModelRunner.execute (one forward_paged over the flattened batch, logits where we sample)
                       -> Sampler (next token per sampling row; n > 1 groups fork here)
                       -> OutputProcessor.append per row: detokenize, stop checks; a finished sequence's blocks are
                          freed at once (Scheduler.finish)
                       -> StreamDelta per sequence that advanced, RequestOutput per request that finished

With a speculative_config, n-gram drafts are proposed before the schedule and verified after the sampler: see
llm/speculative.py (accepted tokens are appended one by one through the same stop checks, the KV of rejected ones
rolled back).

A request enters in two halves: `make_request` validates it and builds its RequestGroup (pure: any thread may call
it, so errors reach the caller before anything is queued), `add` queues it. `add_request` does both. Everything
else runs on one thread at a time: the offline `LLM` (llm/offline.py) steps the engine on the caller's thread,
`AsyncLLM` (llm/async_engine.py) on its own background thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

import torch

from common.checks import is_int
from common.device import default_device
from common.errors import InvalidArgumentError
from llm.cuda_graphs import DEFAULT_SIZES
from llm.engine_config import EngineConfig
from llm.generation_config import GenerationConfig
from llm.kv_cache import KVCacheManager
from llm.model import CausalLM
from llm.model_runner import ModelRunner
from llm.output_processor import OutputProcessor
from llm.outputs import RequestOutput, StreamDelta
from llm.request import RequestGroup, Sequence
from llm.sampler import Sampler, SamplingParams, make_batch
from llm.scheduler import Scheduler, SchedulerConfig
from llm.speculative import DraftRow, SpecDecodeStats, SpeculativeDecoder, rewind_generators, save_generators
from llm.tokenizer import Tokenizer

__all__ = ["EngineStepOutput", "LLMEngine"]


@dataclass
class EngineStepOutput:
    deltas: list[StreamDelta] = field(default_factory=list)  # one per sequence that advanced or finished
    finished: list[RequestOutput] = field(default_factory=list)  # requests that completed this step
    num_tokens: int = 0  # tokens run through the model
    num_generated: int = 0  # tokens sampled


class LLMEngine:
    """Synchronous engine: add_request / abort_request / step. Not thread-safe (AsyncLLM serialises access)."""

    def __init__(
        self,
        model: CausalLM,
        tokenizer: Tokenizer | None,
        config: EngineConfig | None = None,
        generation_config: GenerationConfig | None = None,
    ):
        self.model = model.eval()
        self.model_config = model.config
        self.tokenizer = tokenizer
        self.generation_config = generation_config or GenerationConfig()
        p = next(model.parameters())
        # Settled for this model and device: max_model_len and num_blocks are ints from here on.
        self.config = cfg = (config or EngineConfig()).resolve(model.config, p.dtype, p.device)
        assert cfg.num_blocks is not None and cfg.max_model_len is not None
        self.max_model_len = cfg.max_model_len
        graph_sizes = [] if cfg.enforce_eager else [s for s in DEFAULT_SIZES if s <= cfg.max_num_seqs]
        self.runner = ModelRunner(model, cfg.num_blocks, cfg.block_size, graph_sizes, cfg.max_model_len)
        self.device = self.runner.device
        self.kv = KVCacheManager(cfg.num_blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(SchedulerConfig.from_engine(cfg), self.kv)
        self.sampler = Sampler()
        # Stop on any eos: the tokenizer's (and its end-of-turn token), config.json's, generation_config.json's.
        eos = list(tokenizer.stop_ids) if tokenizer is not None else []
        eos += model.config.eos_token_ids + list(self.generation_config.eos_token_ids)
        self.output_processor = OutputProcessor(eos, self.max_model_len)
        spec = cfg.speculative_config
        self.spec = SpeculativeDecoder(spec, self.max_model_len) if spec is not None else None
        # engine-level counters
        self.num_steps = 0
        self.num_generated_tokens = 0
        self.num_finished = 0
        self.num_aborted = 0

    @property
    def _window_note(self) -> str:
        """Why the context ends where it does, when the sliding window ends it (ModelConfig.context_length)."""
        window = self.model_config.sliding_window
        if window is None or self.max_model_len < window:
            return ""
        return (
            f" (the model uses sliding-window attention over {window} tokens, which pqrag does not implement: it "
            f"serves sequences up to the window, where full attention is exact)"
        )

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_dir(
        cls,
        model_dir: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        config: EngineConfig | None = None,
        **options: Any,
    ) -> LLMEngine:
        """Load a checkpoint directory (config.json, *.safetensors, tokenizer.json, generation_config.json) of any
        family in llm/families.py. dtype None: the checkpoint's own (checkpoint.auto_dtype). options: EngineConfig
        fields, replacing config's (or the defaults)."""
        from llm.checkpoint import load_model

        config = EngineConfig.with_options(config, **options)  # before the load: a misspelt option fails at once
        device = torch.device(device) if device else default_device()
        model = load_model(model_dir, device=device, dtype=dtype)
        tok_file = os.path.join(os.fspath(model_dir), "tokenizer.json")
        tokenizer = Tokenizer.from_file(model_dir) if os.path.exists(tok_file) else None
        return cls(model, tokenizer, config, GenerationConfig.load(model_dir))

    def default_sampling_params(self, **fields: Any) -> SamplingParams:
        """SamplingParams with `fields` set; when they set no sampling field, the checkpoint's generation_config.json
        sampling (if any) fills the rest."""
        return SamplingParams(**{**self.generation_config.defaults_for(fields), **fields})

    # ---- requests -----------------------------------------------------------------------------------------------
    def validate(self, prompt_token_ids: Seq[int], params: SamplingParams) -> int:
        """Check a request without queueing it; returns its effective max_tokens. This is the one place that checks
        a request against the model's window. Raises InvalidArgumentError (the service maps it to
        INVALID_ARGUMENT). Pure: safe to call from any thread."""
        n = len(prompt_token_ids)
        if n == 0:
            raise InvalidArgumentError("the prompt is empty; at least one token is needed")
        V = self.model_config.vocab_size
        bad = [t for t in prompt_token_ids if not (is_int(t) and 0 <= t < V)]
        if bad:
            raise InvalidArgumentError(f"prompt token ids must be ints in [0, {V}); got {bad[:5]}")
        limit = self.max_model_len
        if n > limit - 1:
            raise InvalidArgumentError(
                f"the prompt has {n} tokens but the model's context is {limit}{self._window_note}: at most "
                f"{limit - 1} prompt tokens leave room for one generated token"
            )
        max_tokens = params.max_tokens if params.max_tokens is not None else limit - n
        if n + max_tokens > limit:
            raise InvalidArgumentError(
                f"prompt ({n} tokens) + max_tokens ({max_tokens}) = {n + max_tokens} exceeds the model's context "
                f"of {limit} tokens{self._window_note}; lower max_tokens to at most {limit - n}"
            )
        if params.constraint is not None and params.constraint.max_token_id >= V:
            raise InvalidArgumentError(f"the constraint's token ids exceed the vocabulary ({V}): another tokenizer's?")
        if params.stop_list and self.tokenizer is None:
            raise InvalidArgumentError("stop strings need a tokenizer; this engine has none")
        self.scheduler.check_fits(n, max_tokens)
        return max_tokens

    def make_request(
        self,
        request_id: str,
        prompt_token_ids: Seq[int],
        params: SamplingParams | None = None,
        prompt: str | None = None,
        arrival_time: float | None = None,
    ) -> RequestGroup:
        """Validate a request (see validate) and build it, without queueing it: pass it to `add`. Pure."""
        params = params or SamplingParams()
        max_tokens = self.validate(prompt_token_ids, params)
        return RequestGroup(request_id, list(prompt_token_ids), params, prompt, arrival_time, self.device, max_tokens)

    def add(self, group: RequestGroup) -> RequestGroup:
        """Queue a request built by make_request. Raises QueueFullError (max_waiting reached) or
        InvalidArgumentError (its id is in use)."""
        self.scheduler.add(group, self._make_seq)
        return group

    def add_request(
        self, request_id: str, prompt_token_ids: Seq[int], params: SamplingParams | None = None, **fields: Any
    ) -> RequestGroup:
        """make_request + add (fields: make_request's prompt, arrival_time). Raises InvalidArgumentError (invalid /
        too long) or QueueFullError."""
        return self.add(self.make_request(request_id, prompt_token_ids, params, **fields))

    def _make_seq(self, group: RequestGroup, index: int, order: tuple[int, int]) -> Sequence:
        params = group.params if group.params.n == 1 else group.params.child(index)
        return Sequence(group, index, params, self.tokenizer, order)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Abort now: every sequence of the request finishes with "abort" and its KV blocks are freed.
        Returns the partial output, or None if the request is unknown or already finished."""
        group = self._abort(request_id)
        return None if group is None else group.output()

    def _abort(self, request_id: str) -> RequestGroup | None:
        group = self.scheduler.abort(request_id)
        if group is not None:
            self.num_aborted += 1
            group.metrics.finished_time = time.monotonic()
        return group

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    @property
    def num_free_blocks(self) -> int:
        return self.kv.num_free_blocks

    # ---- the step -----------------------------------------------------------------------------------------------
    def step(self) -> EngineStepOutput:
        """One iteration of the loop in the module docstring; an empty output when nothing is scheduled."""
        drafts = self.spec.propose(self.scheduler.running) if self.spec is not None else None
        sched = self.scheduler.schedule(drafts)
        out = EngineStepOutput()
        if sched.empty:
            return out
        now = time.monotonic()
        for s in sched.scheduled:
            m = s.seq.group.metrics
            if m.first_scheduled_time is None:
                m.first_scheduled_time = now
        logits = self.runner.execute(sched, self.kv)  # (M, V)
        self.num_steps += 1
        out.num_tokens = sched.num_tokens

        # Sampling rows: one per sampling sequence, plus the freshly forked children of n > 1 groups, which
        # sample their first token from their parent's logits row, and len(draft)+1 rows of a drafted sequence.
        rows: list[Sequence | DraftRow] = []
        row_logits: list[int] = []
        drafted: list[tuple[Sequence, list[int], int]] = []  # (sequence, draft, its first row)
        j = 0
        for s in (x for x in sched.scheduled if x.samples):
            if s.draft:
                drafted.append((s.seq, s.draft, len(rows)))
                rows.extend(SpeculativeDecoder.rows(s.seq, s.draft))
                row_logits.extend(range(j, j + len(s.draft) + 1))
                j += len(s.draft) + 1
                continue
            rows.append(s.seq)
            row_logits.append(j)
            if not s.seq.group.forked:
                for child in self.scheduler.fork(s.seq, self._make_seq):
                    rows.append(child)
                    row_logits.append(j)
            j += 1
        if len(rows) != logits.shape[0]:
            logits = logits[torch.tensor(row_logits, device=logits.device)]
        if rows:
            saved = save_generators(seq for seq, _, _ in drafted)
            sampled = self._sample(rows, logits)  # type: ignore[arg-type]
            now = time.monotonic()
            proc = self.output_processor
            advanced: list[Sequence] = []
            for row, (tok, lp) in zip(rows, sampled):
                if isinstance(row, DraftRow):
                    continue
                advanced.append(row)
                reason = proc.append(row, tok, lp, now)
                if reason is not None:
                    self.scheduler.finish(row, reason)
            out.num_generated = len(advanced)
            if drafted:
                self.spec.stats.num_spec_steps += 1  # type: ignore[union-attr]
            for seq, draft, first in drafted:
                advanced.append(seq)
                out.num_generated += self._verify(seq, draft, sampled[first : first + len(draft) + 1], saved, now)
            self.num_generated_tokens += out.num_generated
            done: dict[str, RequestGroup] = {}
            for seq in advanced:
                d = proc.delta(seq)
                if seq.group.finished:
                    d.metrics = seq.group.metrics
                    done[seq.group.request_id] = seq.group
                out.deltas.append(d)
            for group in done.values():
                group.metrics.finished_time = now
                self.num_finished += 1
                out.finished.append(group.output())
        return out

    def _verify(
        self,
        seq: Sequence,
        draft: list[int],
        sampled: list[tuple[int, dict[int, float] | None]],
        saved: dict[str, torch.Tensor],
        now: float,
    ) -> int:
        """Commit a drafted sequence's accepted tokens and the target's next draw (llm/speculative.py), stopping at
        a stop condition; roll its KV back past the rejected ones. Returns the number of tokens emitted."""
        assert self.spec is not None
        accepted = self.spec.num_accepted(draft, [t for t, _ in sampled])
        emitted = 0
        for tok, lp in sampled[: accepted + 1]:
            emitted += 1
            reason = self.output_processor.append(seq, tok, lp, now)
            if reason is not None:  # never emit past a stop: the rest of the draft is dropped with the sequence
                self.scheduler.finish(seq, reason)
                return emitted
        rewind_generators(saved, seq, emitted, self.model_config.vocab_size)
        seq.num_computed_tokens = seq.num_tokens - 1  # the last emitted token is not in the cache yet
        self.kv.trim(seq)
        return emitted

    def _sample(self, rows: list[Sequence], logits: torch.Tensor) -> list[tuple[int, dict[int, float] | None]]:
        params = [s.params for s in rows]
        any_pen = any(p.has_penalties for p in params)
        batch = make_batch(
            params,
            logits.shape[1],
            prompt_ids=[s.prompt_token_ids for s in rows] if any_pen else None,
            output_ids=[s.output_token_ids for s in rows] if any_pen else None,
            generators=[s.generator for s in rows],
            banned_ids=self.output_processor.banned_ids(rows),
            allowed_ids=self.output_processor.allowed_ids(rows),
            device=logits.device,
        )
        return self.output_processor.unpack(rows, self.sampler(logits, batch))

    def abort_stream(self, request_id: str) -> list[StreamDelta]:
        """Abort like abort_request; returns the final delta of each sequence that was still open (what a stream
        consumer has not yet seen finish)."""
        group = self.scheduler.groups.get(request_id)
        if group is None:
            return []
        still_open = [seq for seq in group.seqs if not seq.finished]
        self._abort(request_id)
        deltas = [self.output_processor.delta(seq) for seq in still_open]
        for d in deltas:
            d.metrics = group.metrics
        return deltas

    # ---- metrics ------------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        s = self.scheduler
        q = s.prefix_queried_tokens
        return {
            "num_running": s.num_running,
            "num_waiting": s.num_waiting,
            "kv_usage": self.kv.usage(),
            "num_free_blocks": self.kv.num_free_blocks,
            "num_blocks": self.kv.pool.num_blocks,
            "prefix_cache_hit_rate": s.prefix_hit_tokens / q if q else 0.0,
            "prefix_cache_hit_tokens": s.prefix_hit_tokens,
            "prefix_cache_queried_tokens": q,
            "num_preemptions": s.num_preemptions,
            "num_steps": self.num_steps,
            "num_generated_tokens": self.num_generated_tokens,
            "num_finished_requests": self.num_finished,
            "num_aborted_requests": self.num_aborted,
            # speculative decoding (zeros when off, so the Prometheus gauges exist either way)
            **(self.spec.stats if self.spec is not None else SpecDecodeStats()).as_dict(),
        }
