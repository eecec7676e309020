"""The model runner: one forward_paged over a scheduled batch (prefill chunks, decodes) returns, in order, the
logits of exactly the sequences that sample this step, equal to a full forward's; a step of partial chunks only
returns none."""

from __future__ import annotations

import torch

from llm.engine_config import EngineConfig
from llm.kv_cache import KVCacheManager
from llm.model_runner import ModelRunner
from llm.request import RequestGroup, Sequence
from llm.sampler import SamplingParams
from llm.scheduler import Scheduler, SchedulerConfig

ATOL = 1e-4  # fp32, paged vs full attention: the same sums in another order


def make_seq(group, index, order):
    return Sequence(group, index, group.params, None, order)


def full_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0, -1]


def test_execute_returns_the_sampling_rows(model):
    cfg = EngineConfig(block_size=4, num_blocks=32, max_num_batched_tokens=12)
    kv = KVCacheManager(cfg.num_blocks, cfg.block_size, cfg.enable_prefix_caching)
    sched = Scheduler(SchedulerConfig.from_engine(cfg), kv)
    runner = ModelRunner(model, cfg.num_blocks, cfg.block_size)
    assert runner.kv_caches[0][0].shape == (32, 4, model.config.num_kv_heads, model.config.head_dim)
    prompts = {"a": list(range(10, 15)), "b": list(range(40, 50))}  # 5 + 10 tokens > the 12-token budget
    for rid, ids in prompts.items():
        sched.add(RequestGroup(rid, ids, SamplingParams()), make_seq)

    out = sched.schedule()  # a whole (samples), b's first 7 tokens (does not)
    assert [(s.seq.request_id, s.samples) for s in out.scheduled] == [("a", True), ("b", False)]
    logits = runner.execute(out, kv)
    assert logits.shape == (1, model.config.vocab_size) and logits.dtype == torch.float32
    torch.testing.assert_close(logits[0], full_logits(model, prompts["a"]), atol=ATOL, rtol=0)
    a = out.scheduled[0].seq
    a.append_token(7)

    out = sched.schedule()  # b's last 3 tokens (a chunk, first) and a's decode
    assert [s.seq.request_id for s in out.scheduled] == ["b", "a"] and all(s.samples for s in out.scheduled)
    logits = runner.execute(out, kv)
    torch.testing.assert_close(logits[0], full_logits(model, prompts["b"]), atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[1], full_logits(model, prompts["a"] + [7]), atol=ATOL, rtol=0)


def test_partial_chunks_only_skip_the_head(model):
    cfg = EngineConfig(block_size=4, num_blocks=8, max_num_batched_tokens=4)
    kv = KVCacheManager(cfg.num_blocks, cfg.block_size, cfg.enable_prefix_caching)
    sched = Scheduler(SchedulerConfig.from_engine(cfg), kv)
    sched.add(RequestGroup("a", list(range(10, 20)), SamplingParams()), make_seq)
    out = sched.schedule()
    assert not out.scheduled[0].samples
    logits = ModelRunner(model, cfg.num_blocks, cfg.block_size).execute(out, kv)
    assert logits.shape == (0, model.config.vocab_size)
