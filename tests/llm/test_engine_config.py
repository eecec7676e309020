"""EngineConfig: field checks, keyword options (unknown ones refused with the field list), and `resolve` settling
max_model_len and the KV pool size for a model on a device."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from common.errors import InvalidArgumentError
from llm.config import get_config
from llm.engine_config import EngineConfig
from llm.kv_cache import kv_bytes_per_block

MODEL = get_config("tiny", max_position_embeddings=256)  # 2 layers, 2 KV heads of 16
CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(block_size=0),
        dict(max_num_seqs=0),
        dict(max_num_seqs=True),  # a bool is no count
        dict(max_num_batched_tokens=-1),
        dict(max_waiting=1.5),
        dict(num_blocks=0),
        dict(kv_cache_memory=0),
        dict(max_model_len=0),
    ],
)
def test_fields_are_checked(kwargs):
    with pytest.raises(InvalidArgumentError, match=next(iter(kwargs))):
        EngineConfig(**kwargs)


def test_with_options_replaces_fields_and_names_the_unknown():
    base = EngineConfig(block_size=8)
    cfg = EngineConfig.with_options(base, max_num_seqs=3)
    assert (cfg.block_size, cfg.max_num_seqs, base.max_num_seqs) == (8, 3, 64)
    assert EngineConfig.with_options(max_waiting=7) == EngineConfig(max_waiting=7)
    with pytest.raises(InvalidArgumentError, match=r"unknown engine option.*'max_num_seq'.*max_num_seqs"):
        EngineConfig.with_options(max_num_seq=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.block_size = 4  # type: ignore[misc]


def test_resolve_settles_window_and_pool():
    cfg = EngineConfig(num_blocks=10).resolve(MODEL, torch.float32, CPU)
    assert cfg.num_blocks == 10 and cfg.max_model_len == 256
    assert EngineConfig(max_model_len=100, num_blocks=1).resolve(MODEL, torch.float32, CPU).max_model_len == 100
    with pytest.raises(InvalidArgumentError, match="max_position_embeddings"):
        EngineConfig(max_model_len=257).resolve(MODEL, torch.float32, CPU)
    with pytest.raises(InvalidArgumentError, match="chunked prefill"):
        EngineConfig(max_num_batched_tokens=100, max_model_len=256, enable_chunked_prefill=False).resolve(
            MODEL, torch.float32, CPU
        )


def test_resolve_sizes_the_pool_from_memory():
    per_block = kv_bytes_per_block(MODEL.num_layers, MODEL.num_kv_heads, MODEL.head_dim, 16, torch.bfloat16)
    sized = EngineConfig(kv_cache_memory=10 * per_block + 1).resolve(MODEL, torch.bfloat16, CPU)
    assert sized.num_blocks == 10
    # no budget given: enough for max_num_seqs sequences at full length (capped at 1 GiB on CPU)
    auto = EngineConfig(max_num_seqs=3).resolve(MODEL, torch.bfloat16, CPU)
    assert auto.num_blocks == 3 * 256 // 16
    with pytest.raises(InvalidArgumentError, match="does not fit one block"):
        EngineConfig(kv_cache_memory=per_block - 1).resolve(MODEL, torch.bfloat16, CPU)
