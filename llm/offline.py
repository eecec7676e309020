"""The offline entry point (vLLM's `LLM`): batch generation on the caller's thread, no server, no asyncio.

    from llm import LLM, SamplingParams
    llm = LLM("checkpoints/small", max_num_seqs=32)        # keyword options: EngineConfig fields
    outs = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=32))
    print(outs[0].text)

Every prompt is validated before any is queued; then the engine is stepped until all of them finished, feeding the
waiting queue as far as it accepts, so a batch may be larger than max_waiting.
"""

from __future__ import annotations

import os
from collections.abc import Sequence as Seq
from typing import Any

import torch

from common.errors import InvalidArgumentError
from llm.engine import LLMEngine
from llm.engine_config import EngineConfig
from llm.model import CausalLM
from llm.outputs import RequestOutput
from llm.sampler import SamplingParams
from llm.tokenizer import Tokenizer


class LLM:
    """Offline batch generation: `LLM(model_dir, **engine_options).generate(prompts, params)`.

    config and options (EngineConfig field names: max_num_seqs, block_size, kv_cache_memory, ...) configure the
    engine; an unknown option raises InvalidArgumentError. `engine=` wraps an engine that already exists."""

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        config: EngineConfig | None = None,
        *,
        engine: LLMEngine | None = None,
        **options: Any,
    ):
        if engine is None:
            if model_dir is None:
                raise InvalidArgumentError("LLM needs a model_dir (or use LLM.from_model(model, tokenizer))")
            engine = LLMEngine.from_dir(model_dir, device=device, dtype=dtype, config=config, **options)
        elif config is not None or options:
            raise InvalidArgumentError("engine options configure a new engine; the given engine has its own config")
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self._counter = 0

    @classmethod
    def from_model(
        cls, model: CausalLM, tokenizer: Tokenizer | None, config: EngineConfig | None = None, **options: Any
    ) -> LLM:
        """Wrap an in-memory model (tests, notebooks); options are EngineConfig fields."""
        return cls(engine=LLMEngine(model, tokenizer, EngineConfig.with_options(config, **options)))

    def generate(
        self,
        prompts: str | list[int] | Seq[str | list[int]],
        params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Generate for every prompt (strings are encoded as the tokenizer's post-processor says, e.g. with Llama's
        <s>; token-id lists are used as is). params None: the checkpoint's generation_config.json sampling, if any.
        Returns one RequestOutput per prompt, in prompt order."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        prompts = list(prompts)  # type: ignore[arg-type]
        if params is None or isinstance(params, SamplingParams):
            params = [params or self.engine.default_sampling_params()] * len(prompts)
        params = list(params)
        if len(params) != len(prompts):
            raise InvalidArgumentError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        engine = self.engine
        requests = []  # all validated before anything is queued
        for p, sp in zip(prompts, params):
            if isinstance(p, str):
                if self.tokenizer is None:
                    raise InvalidArgumentError("text prompts need a tokenizer; pass token ids")
                text, toks = p, self.tokenizer.encode(p, add_special_tokens=True)
            else:
                text, toks = None, list(p)
            self._counter += 1
            requests.append(engine.make_request(f"llm-{self._counter}", toks, sp, prompt=text))
        ids = [r.request_id for r in requests]
        results: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm import tqdm

            bar = tqdm(total=len(prompts), desc="generate", unit="req")
        pending = requests[::-1]
        try:
            while pending or engine.has_unfinished_requests():
                # Feed the queue as far as it accepts: offline batches may exceed max_waiting.
                while pending and engine.scheduler.num_waiting < engine.config.max_waiting:
                    engine.add(pending.pop())
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
