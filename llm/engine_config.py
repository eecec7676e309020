"""EngineConfig: every knob of the inference engine and its default, written once.

The components are built from it, not from copies of its fields: the scheduler's SchedulerConfig
(`SchedulerConfig.from_engine`), the KV cache manager and the model runner (block_size, num_blocks,
enable_prefix_caching), and the offline `LLM` / `AsyncLLM.from_dir`, which take its field names as keyword options
(`EngineConfig.with_options`). Options left open (num_blocks, max_model_len) are settled by `resolve` against the
model, its dtype and its device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from common.checks import optional_positive_int, positive_int
from common.errors import InvalidArgumentError
from llm.config import ModelConfig
from llm.kv_cache import cdiv, num_blocks_for_budget
from llm.speculative_config import SpeculativeConfig

_DEFAULT_CPU_KV_BYTES = 1 << 30  # cap of the automatic KV budget on CPU (1 GiB)
_GPU_KV_FRACTION = 0.5  # of the free GPU memory; leave room for activations and the rest of the process


@dataclass(frozen=True)
class EngineConfig:
    block_size: int = 16  # tokens per KV block
    kv_cache_memory: int | None = None  # bytes of KV cache; None = enough for max_num_seqs full contexts, capped
    num_blocks: int | None = None  # exact block count (overrides kv_cache_memory; tests use tiny pools)
    max_num_seqs: int = 64  # sequences running at once (rows of the decode batch)
    max_num_batched_tokens: int = 2048  # tokens per step, prefill chunks + decodes (bounds step latency)
    max_waiting: int = 1024  # requests queued, not yet running; beyond this add raises QueueFullError
    enable_prefix_caching: bool = True  # reuse the KV blocks of a prompt prefix seen before
    enable_chunked_prefill: bool = True  # split a long prompt over steps instead of waiting for a free budget
    max_model_len: int | None = None  # prompt + generated tokens of one sequence; default: max_position_embeddings
    # Speculative decoding (n-gram drafts): a SpeculativeConfig, or its dict / JSON form; None = off.
    speculative_config: SpeculativeConfig | None = None
    enforce_eager: bool = False  # CUDA: never replay decode steps from CUDA graphs (llm/cuda_graphs.py)

    def __post_init__(self) -> None:
        # frozen: normalise the dict / JSON form in place, validated (unknown method or keys raise)
        object.__setattr__(self, "speculative_config", SpeculativeConfig.parse(self.speculative_config))
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "max_waiting"):
            positive_int(getattr(self, name), name)
        for name in ("kv_cache_memory", "num_blocks", "max_model_len"):
            optional_positive_int(getattr(self, name), name)

    @classmethod
    def with_options(cls, config: EngineConfig | None = None, **options: Any) -> EngineConfig:
        """config (default: all defaults) with some fields replaced by keyword options; an option that is no field
        raises InvalidArgumentError naming the fields there are."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise InvalidArgumentError(f"unknown engine option(s) {unknown}; EngineConfig's fields are {sorted(names)}")
        return dataclasses.replace(config or cls(), **options)

    def resolve(self, model: ModelConfig, dtype: torch.dtype, device: torch.device) -> EngineConfig:
        """A copy with max_model_len and num_blocks settled for this model on this device; checks that they fit."""
        max_len = self.max_model_len or model.context_length
        if max_len > model.max_position_embeddings:
            raise InvalidArgumentError(
                f"max_model_len={max_len} exceeds the model's max_position_embeddings={model.max_position_embeddings}"
            )
        if max_len > model.context_length:  # NOTE: sliding windows are refused, not implemented (ModelConfig)
            raise InvalidArgumentError(
                f"max_model_len={max_len} exceeds the model's sliding window of {model.sliding_window} tokens: pqrag "
                f"does not implement sliding-window attention, so it serves sequences up to the window, where full "
                f"attention is exact; set max_model_len <= {model.context_length}"
            )
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < max_len:
            raise InvalidArgumentError(
                f"without chunked prefill max_num_batched_tokens ({self.max_num_batched_tokens}) must cover "
                f"max_model_len ({max_len}), or a long prompt could never be scheduled"
            )
        return dataclasses.replace(
            self, max_model_len=max_len, num_blocks=self._num_blocks(model, dtype, device, max_len)
        )

    def _num_blocks(self, model: ModelConfig, dtype: torch.dtype, device: torch.device, max_len: int) -> int:
        if self.num_blocks is not None:
            return self.num_blocks
        geometry = (model.num_layers, model.num_kv_heads, model.head_dim, self.block_size, dtype)
        if self.kv_cache_memory is not None:
            return num_blocks_for_budget(self.kv_cache_memory, *geometry)
        want = self.max_num_seqs * cdiv(max_len, self.block_size)  # every running sequence at full length
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            cap = int(free * _GPU_KV_FRACTION)
        else:
            cap = _DEFAULT_CPU_KV_BYTES
        return min(want, num_blocks_for_budget(cap, *geometry))
