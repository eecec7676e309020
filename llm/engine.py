"""The inference engine: scheduler + paged KV cache + model runner + sampler, and the offline `LLM` API.

    LLMEngine.step():  schedule (which sequences run how many tokens)
                       -> ModelRunner.execute (one forward_paged over the flattened batch, logits where we sample)
                       -> Sampler (next token per sampling row; n > 1 groups fork here)
                       -> per sequence: append, detokenize, stop checks, finish (blocks freed at once)
                       -> StreamDelta per sequence that advanced, RequestOutput per request that finished

Everything runs on the caller's thread; `AsyncLLM` (llm/async_engine.py) drives it from one background thread.

    from llm import LLM, SamplingParams
    llm = LLM("checkpoints/small")
    outs = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=32))
    print(outs[0].text)
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

import torch

from llm.attention import build_attention_metadata
from llm.config import ModelConfig
from llm.kv_cache import KVCacheManager, allocate_kv_caches, copy_blocks, kv_bytes_per_block
from llm.model import CausalLM
from llm.outputs import CompletionOutput, RequestMetrics, RequestOutput, StreamDelta
from llm.request import RequestGroup, Sequence
from llm.sampler import Sampler, SamplingParams, make_batch
from llm.scheduler import QueueFullError, Scheduler, SchedulerConfig, SchedulerOutput
from llm.tokenizer import Tokenizer

__all__ = [
    "EngineConfig",
    "LLMEngine",
    "LLM",
    "SamplingParams",
    "RequestOutput",
    "CompletionOutput",
    "RequestMetrics",
    "StreamDelta",
    "QueueFullError",
    "AsyncLLM",
]

_DEFAULT_CPU_KV_BYTES = 1 << 30  # cap of the automatic KV budget on CPU (1 GiB)


@dataclass
class EngineConfig:
    block_size: int = 16  # tokens per KV block
    kv_cache_memory: int | None = None  # bytes of KV cache; None = enough for max_num_seqs full contexts, capped
    num_blocks: int | None = None  # exact block count (overrides kv_cache_memory; tests use tiny pools)
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_waiting: int = 1024
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    max_model_len: int | None = None  # default: the model's max_position_embeddings

    def resolve_num_blocks(self, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> int:
        if self.num_blocks is not None:
            return self.num_blocks
        per_block = kv_bytes_per_block(config.num_layers, config.num_kv_heads, config.head_dim, self.block_size, dtype)
        budget = self.kv_cache_memory
        if budget is None:
            max_len = self.max_model_len or config.max_position_embeddings
            want = self.max_num_seqs * -(-max_len // self.block_size) * per_block
            if device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(device)
                cap = int(free * 0.5)  # leave room for activations and the rest of the process
            else:
                cap = _DEFAULT_CPU_KV_BYTES
            budget = min(want, cap)
        n = budget // per_block
        if n < 1:
            raise ValueError(f"kv_cache_memory={budget} bytes holds no KV block ({per_block} bytes each)")
        return int(n)


@dataclass
class EngineStepOutput:
    deltas: list[StreamDelta] = field(default_factory=list)  # one per sequence that advanced or finished
    finished: list[RequestOutput] = field(default_factory=list)  # requests that completed this step
    num_tokens: int = 0  # tokens run through the model
    num_generated: int = 0  # tokens sampled


class ModelRunner:
    """Owns the KV cache tensors; turns a SchedulerOutput into one forward_paged call."""

    def __init__(self, model: CausalLM, num_blocks: int, block_size: int):
        cfg = model.config
        p = next(model.parameters())
        self.model = model
        self.device, self.dtype = p.device, p.dtype
        self.block_size = block_size
        self.kv_caches = allocate_kv_caches(
            cfg.num_layers, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim, dtype=p.dtype, device=p.device
        )

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput, kv: KVCacheManager) -> torch.Tensor:
        """Run the scheduled chunks; logits (M, V) fp32 of the last token of each sampling sequence, in order."""
        copy_blocks(self.kv_caches, sched.block_copies)  # copy-on-write first: the forward writes the copies
        items = sched.scheduled
        meta = build_attention_metadata(
            [s.num_computed for s in items],
            [s.num_new for s in items],
            [kv.get_block_ids(s.seq.request_id) for s in items],
            self.block_size,
            num_prefills=sched.num_prefill_seqs,
            device=self.device,
        )
        ids: list[int] = []
        sample_at: list[int] = []
        for s in items:
            ids.extend(s.seq.all_token_ids[s.num_computed : s.num_computed + s.num_new])
            if s.samples:
                sample_at.append(len(ids) - 1)
        input_ids = torch.tensor(ids, dtype=torch.int64, device=self.device)  # (N,)
        if not sample_at:  # only partial prefill chunks: nothing to sample, skip the lm_head
            self.model.forward_paged(
                input_ids, meta, self.kv_caches, torch.zeros(0, dtype=torch.int64, device=self.device)
            )
            return torch.empty((0, self.model.config.vocab_size), device=self.device)
        idx = torch.tensor(sample_at, dtype=torch.int64, device=self.device)  # (M,)
        return self.model.forward_paged(input_ids, meta, self.kv_caches, idx).float()  # (M, V)


class LLMEngine:
    """Synchronous engine: add_request / abort_request / step. Not thread-safe (AsyncLLM serialises access)."""

    def __init__(self, model: CausalLM, tokenizer: Tokenizer | None, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        self.model = model.eval()
        self.model_config = model.config
        self.tokenizer = tokenizer
        p = next(model.parameters())
        num_blocks = self.config.resolve_num_blocks(model.config, p.dtype, p.device)
        self.runner = ModelRunner(model, num_blocks, self.config.block_size)
        self.device = self.runner.device
        self.kv = KVCacheManager(num_blocks, self.config.block_size, self.config.enable_prefix_caching)
        self.max_model_len = self.config.max_model_len or model.config.max_position_embeddings
        if self.max_model_len > model.config.max_position_embeddings:
            raise ValueError(
                f"max_model_len={self.max_model_len} exceeds the model's max_position_embeddings="
                f"{model.config.max_position_embeddings}"
            )
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_seqs=self.config.max_num_seqs,
                max_num_batched_tokens=self.config.max_num_batched_tokens,
                max_waiting=self.config.max_waiting,
                enable_chunked_prefill=self.config.enable_chunked_prefill,
                max_model_len=self.max_model_len,
            ),
            self.kv,
        )
        self.sampler = Sampler()
        eos = set(tokenizer.stop_ids) if tokenizer is not None else set()
        if model.config.eos_token_id is not None:
            eos.add(model.config.eos_token_id)
        self.eos_ids = sorted(eos)
        # engine-level counters
        self.num_steps = 0
        self.num_generated_tokens = 0
        self.num_finished = 0
        self.num_aborted = 0

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_dir(
        cls,
        model_dir: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        **config: Any,
    ) -> LLMEngine:
        """Load a checkpoint directory (config.json, *.safetensors, tokenizer.json)."""
        from llm.checkpoint import load_model

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        model = load_model(model_dir, device=device, dtype=dtype)
        tok_file = os.path.join(os.fspath(model_dir), "tokenizer.json")
        tokenizer = Tokenizer.from_file(model_dir) if os.path.exists(tok_file) else None
        return cls(model, tokenizer, EngineConfig(**config))

    # ---- requests -----------------------------------------------------------------------------------------------
    def validate(self, prompt_token_ids: Seq[int], params: SamplingParams) -> int:
        """Check a request without queueing it; returns its effective max_tokens. Raises ValueError (the server
        maps it to INVALID_ARGUMENT). Pure: safe to call from any thread."""
        n = len(prompt_token_ids)
        if n == 0:
            raise ValueError("the prompt is empty; at least one token is needed")
        V = self.model_config.vocab_size
        bad = [t for t in prompt_token_ids if not (isinstance(t, int) and 0 <= t < V)]
        if bad:
            raise ValueError(f"prompt token ids must be ints in [0, {V}); got {bad[:5]}")
        limit = self.max_model_len
        if n > limit - 1:
            raise ValueError(
                f"the prompt has {n} tokens but the model's context is {limit}: at most {limit - 1} prompt tokens "
                f"leave room for one generated token"
            )
        max_tokens = params.max_tokens if params.max_tokens is not None else limit - n
        if n + max_tokens > limit:
            raise ValueError(
                f"prompt ({n} tokens) + max_tokens ({max_tokens}) = {n + max_tokens} exceeds the model's context "
                f"of {limit} tokens; lower max_tokens to at most {limit - n}"
            )
        if params.stop_list and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer; this engine has none")
        self.scheduler.check_fits(n, max_tokens)
        return max_tokens

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Seq[int],
        params: SamplingParams | None = None,
        prompt: str | None = None,
        arrival_time: float | None = None,
    ) -> RequestGroup:
        """Queue a request. Raises ValueError (invalid / too long) or QueueFullError (max_waiting reached)."""
        params = params or SamplingParams()
        max_tokens = self.validate(prompt_token_ids, params)
        group = RequestGroup(request_id, list(prompt_token_ids), params, prompt, arrival_time, self.device, max_tokens)
        self.scheduler.add(group, self._make_seq)
        return group

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
        sched = self.scheduler.schedule()
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
        # sample their first token from their parent's logits row.
        rows: list[Sequence] = []
        row_logits: list[int] = []
        for j, s in enumerate(x for x in sched.scheduled if x.samples):
            rows.append(s.seq)
            row_logits.append(j)
            if not s.seq.group.forked:
                for child in self.scheduler.fork(s.seq, self._make_seq):
                    rows.append(child)
                    row_logits.append(j)
        if len(rows) != logits.shape[0]:
            logits = logits[torch.tensor(row_logits, device=logits.device)]
        if rows:
            sampled = self._sample(rows, logits)
            now = time.monotonic()
            for seq, (tok, lp) in zip(rows, sampled):
                self._append(seq, tok, lp, now)
            out.num_generated = len(rows)
            self.num_generated_tokens += len(rows)
            done: dict[str, RequestGroup] = {}
            for seq in rows:
                d = self._delta(seq)
                if seq.group.finished:
                    d.metrics = seq.group.metrics
                    done[seq.group.request_id] = seq.group
                out.deltas.append(d)
            for group in done.values():
                group.metrics.finished_time = now
                self.num_finished += 1
                out.finished.append(group.output())
        return out

    def _sample(self, rows: list[Sequence], logits: torch.Tensor) -> list[tuple[int, dict[int, float] | None]]:
        params = [s.params for s in rows]
        banned = None
        if any(s.num_output_tokens < s.params.min_tokens for s in rows):
            banned = [
                (([] if s.params.ignore_eos else self.eos_ids) + (s.params.stop_token_ids or []))
                if s.num_output_tokens < s.params.min_tokens
                else []
                for s in rows
            ]
        any_pen = any(p.has_penalties for p in params)
        batch = make_batch(
            params,
            logits.shape[1],
            prompt_ids=[s.prompt_token_ids for s in rows] if any_pen else None,
            output_ids=[s.output_token_ids for s in rows] if any_pen else None,
            generators=[s.generator for s in rows],
            banned_ids=banned,
            device=logits.device,
        )
        res = self.sampler(logits, batch)
        ids = res.token_ids.tolist()
        if res.logprobs is None:
            return [(t, None) for t in ids]
        chosen = res.logprobs.tolist()
        top_lp = res.top_logprobs.tolist() if res.top_logprobs is not None else None
        top_ids = res.top_token_ids.tolist() if res.top_token_ids is not None else None
        out: list[tuple[int, dict[int, float] | None]] = []
        for i, (seq, t) in enumerate(zip(rows, ids)):
            if seq.params.logprobs is None:
                out.append((t, None))
                continue
            d = {t: chosen[i]}
            k = seq.params.logprobs
            if k and top_ids is not None and top_lp is not None:
                for tid, lp in zip(top_ids[i][:k], top_lp[i][:k]):
                    d.setdefault(tid, lp)
            out.append((t, d))
        return out

    def _append(self, seq: Sequence, tok: int, logprobs: dict[int, float] | None, now: float) -> None:
        """Add a sampled token: metrics, logprobs, detokenization, stop conditions."""
        group, params = seq.group, seq.params
        m = group.metrics
        if m.first_token_time is None:
            m.first_token_time = now
        if seq.index == 0 and seq.last_token_time is not None:
            m.inter_token_latencies.append(now - seq.last_token_time)
        seq.last_token_time = now
        m.num_generated_tokens += 1
        seq.append_token(tok)
        if logprobs is not None and seq.logprobs is not None:
            seq.logprobs.append(logprobs)
            seq.cumulative_logprob += logprobs[tok]
        n_out = seq.num_output_tokens
        past_min = n_out >= params.min_tokens
        reason: str | None = None
        if past_min and not params.ignore_eos and tok in self.eos_ids:
            reason = "stop"
        elif past_min and params.stop_token_ids and tok in params.stop_token_ids:
            reason, seq.stop_reason = "stop", tok
        if reason is None and seq.detok is not None:  # a stop token is not part of the text
            prev_len = len(seq.text)
            seq.text += seq.detok.step(tok)
            if past_min and params.stop_list:
                reason = self._check_stop_strings(seq, prev_len)
        if reason is None and (n_out >= group.max_tokens or seq.num_tokens >= self.max_model_len):
            reason = "length"
        if reason is not None:
            if seq.detok is not None and not isinstance(seq.stop_reason, str):  # a cut text stays cut
                seq.text += seq.detok.flush()
            seq.finish_reason = reason
            self.scheduler.finish(seq, reason)

    @staticmethod
    def _check_stop_strings(seq: Sequence, prev_len: int) -> str | None:
        """Find a stop string in the new text (and the few chars before it that could start one); cut the text
        before it. Never looks inside text already streamed out, so a cut cannot retract emitted text."""
        stops = seq.params.stop_list
        longest = max(len(s) for s in stops)
        start = max(seq.num_emitted_chars, prev_len - longest + 1, 0)
        best: tuple[int, str] | None = None
        for s in stops:
            pos = seq.text.find(s, start)
            if pos >= 0 and (best is None or pos < best[0]):
                best = (pos, s)
        if best is None:
            return None
        seq.text = seq.text[: best[0]]
        seq.stop_reason = best[1]
        return "stop"

    def _delta(self, seq: Sequence) -> StreamDelta:
        """What seq produced since its previous delta. While running, the last len(longest stop)-1 chars are held
        back: they might be the start of a stop string that must not reach the client."""
        hold = 0
        if not seq.finished and seq.params.stop_list:
            hold = max(len(s) for s in seq.params.stop_list) - 1
        upto = max(len(seq.text) - hold, seq.num_emitted_chars)
        text = seq.text[seq.num_emitted_chars : upto]
        seq.num_emitted_chars = upto
        new_ids = seq.output_token_ids[seq.num_emitted_tokens :]
        lps = seq.logprobs[seq.num_emitted_tokens :] if seq.logprobs is not None else None
        seq.num_emitted_tokens = seq.num_output_tokens
        g = seq.group
        return StreamDelta(
            request_id=g.request_id,
            index=seq.index,
            text_delta=text,
            token_ids=new_ids,
            finished=seq.finished,
            finish_reason=seq.finish_reason,
            num_prompt_tokens=len(g.prompt_token_ids),
            num_generated_tokens=seq.num_output_tokens,
            ttft_s=g.metrics.ttft,
            logprobs=lps,
            stop_reason=seq.stop_reason,
        )

    def abort_stream(self, request_id: str) -> list[StreamDelta]:
        """Abort like abort_request; returns the final delta of each sequence that was still open (what a stream
        consumer has not yet seen finish)."""
        group = self.scheduler.groups.get(request_id)
        if group is None:
            return []
        still_open = [seq for seq in group.seqs if not seq.finished]
        self._abort(request_id)
        deltas = [self._delta(seq) for seq in still_open]
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
        }


class LLM:
    """Offline batch generation (vLLM's `LLM`): `LLM(model_dir).generate(prompts, params)`."""

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        kv_cache_memory: int | None = None,
        block_size: int = 16,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 2048,
        *,
        engine: LLMEngine | None = None,
        **engine_kwargs: Any,
    ):
        if engine is None:
            if model_dir is None:
                raise ValueError("LLM needs a model_dir (or use LLM.from_model(model, tokenizer))")
            engine = LLMEngine.from_dir(
                model_dir,
                device=device,
                dtype=dtype,
                kv_cache_memory=kv_cache_memory,
                block_size=block_size,
                max_num_seqs=max_num_seqs,
                max_num_batched_tokens=max_num_batched_tokens,
                **engine_kwargs,
            )
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self._counter = 0

    @classmethod
    def from_model(cls, model: CausalLM, tokenizer: Tokenizer | None, **engine_kwargs: Any) -> LLM:
        """Wrap an in-memory model (tests, notebooks); engine_kwargs are EngineConfig fields."""
        return cls(engine=LLMEngine(model, tokenizer, EngineConfig(**engine_kwargs)))

    def generate(
        self,
        prompts: str | list[int] | Seq[str | list[int]],
        params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Generate for every prompt (strings are encoded without special tokens; token-id lists are used as is).
        Returns one RequestOutput per prompt, in prompt order."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        prompts = list(prompts)  # type: ignore[arg-type]
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        params = list(params)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        encoded: list[tuple[str | None, list[int]]] = []
        for p in prompts:
            if isinstance(p, str):
                if self.tokenizer is None:
                    raise ValueError("text prompts need a tokenizer; pass token ids")
                encoded.append((p, self.tokenizer.encode(p)))
            else:
                encoded.append((None, list(p)))
        engine = self.engine
        ids = []
        for (text, toks), sp in zip(encoded, params):
            engine.validate(toks, sp)  # fail before anything is queued
            self._counter += 1
            ids.append(f"llm-{self._counter}")
        results: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm import tqdm

            bar = tqdm(total=len(prompts), desc="generate", unit="req")
        pending = list(zip(ids, encoded, params))[::-1]
        try:
            while pending or engine.has_unfinished_requests():
                # Feed the queue as far as it accepts: offline batches may exceed max_waiting.
                while pending and engine.scheduler.num_waiting < engine.scheduler.config.max_waiting:
                    rid, (text, toks), sp = pending.pop()
                    engine.add_request(rid, toks, sp, prompt=text)
                for ro in engine.step().finished:
                    results[ro.request_id] = ro
                    if bar is not None:
                        bar.update(1)
        except BaseException:
            for rid in ids:
                if rid not in results:
                    engine.abort_request(rid)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [results[rid] for rid in ids]


def __getattr__(name: str) -> Any:  # AsyncLLM lives in llm/async_engine.py; `from llm.engine import AsyncLLM` works
    if name == "AsyncLLM":
        from llm.async_engine import AsyncLLM

        return AsyncLLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
