"""The engine loop end to end on a tiny random model: greedy output equals a naive full-forward greedy loop token for
token under batching, chunked prefill, prefix-cache hits and preemption; abort frees blocks; seeds, n > 1 forks,
the bounded queue, request validation (context limits, bad ids), and EngineConfig's values reaching the scheduler,
the KV cache and the model runner. Fixtures (tok, model, naive) are in conftest.py."""

from __future__ import annotations

import pytest

from common.errors import InvalidArgumentError, ResourceExhaustedError
from llm import SamplingParams
from llm.engine import LLMEngine
from llm.engine_config import EngineConfig
from llm.scheduler import QueueFullError
from tests.llm.helpers import GREEDY, PROMPTS, assert_matches_naive, make_llm


@pytest.mark.parametrize(
    "kw",
    [
        dict(),  # everything in one step
        dict(max_num_batched_tokens=7),  # chunked prefill: prompts span several steps, beside decodes
        dict(max_num_seqs=2, enable_prefix_caching=False),  # continuous batching: requests join as others leave
    ],
)
def test_greedy_equals_naive_loop(model, tok, naive, kw):
    llm = make_llm(model, tok, **kw)
    outs = llm.generate(PROMPTS, GREEDY)
    assert [o.prompt for o in outs] == PROMPTS
    assert_matches_naive(outs, naive)
    assert outs[0].text == tok.decode(outs[0].token_ids)
    assert llm.engine.num_free_blocks == 128
    m = outs[1].metrics
    assert m.ttft is not None and m.e2e_latency >= m.ttft >= m.queue_time >= 0 and m.mean_itl > 0


def test_prefix_cache_hits_keep_greedy_output(model, tok, naive):
    llm = make_llm(model, tok)
    first = llm.generate(PROMPTS, GREEDY)
    again = llm.generate(PROMPTS[::-1], GREEDY)  # all prompts now hit cached blocks
    stats = llm.engine.stats()
    assert stats["prefix_cache_hit_rate"] > 0.4 and stats["prefix_cache_hit_tokens"] > 0
    assert again[0].metrics.num_cached_tokens > 0
    assert_matches_naive(first + again, naive)


def test_preemption_recomputes_identically(model, tok, naive):
    # 14 blocks of 4 tokens cannot hold the four sequences (~ 6-26 prompt tokens + 12 new each) at once.
    llm = make_llm(model, tok, num_blocks=14)
    outs = llm.generate(PROMPTS, GREEDY)
    assert llm.engine.stats()["num_preemptions"] > 0
    assert sum(o.metrics.num_preemptions for o in outs) > 0
    assert_matches_naive(outs, naive)
    assert llm.engine.num_free_blocks == 14


def test_abort_frees_blocks(model, tok):
    engine = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=64, max_num_batched_tokens=8))
    for i, p in enumerate(PROMPTS):
        engine.add_request(f"r{i}", tok.encode(p), GREEDY)
    engine.step()
    engine.step()
    assert engine.num_free_blocks < 64
    out = engine.abort_request("r2")
    assert out is not None and out.outputs[0].finish_reason == "abort"
    for i in (0, 1, 3):
        engine.abort_request(f"r{i}")
    assert engine.num_free_blocks == 64 and not engine.has_unfinished_requests()
    assert engine.abort_request("r0") is None  # unknown / already done
    assert engine.stats()["num_aborted_requests"] == 4


def test_seeded_sampling_is_batch_independent(model, tok):
    p = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=10, seed=1234, ignore_eos=True)
    llm = make_llm(model, tok)
    alone = llm.generate(PROMPTS[1], p)[0]
    others = SamplingParams(temperature=0.7, max_tokens=10, ignore_eos=True)
    batched = llm.generate(PROMPTS, [others, p, others, SamplingParams(temperature=0, max_tokens=3)])[1]
    assert alone.token_ids == batched.token_ids and alone.text == batched.text
    different = llm.generate(PROMPTS[1], SamplingParams(temperature=1.0, max_tokens=10, seed=99, ignore_eos=True))
    assert different[0].token_ids != alone.token_ids


def test_n_samples_fork_and_share_blocks(model, tok, naive):
    prompt = PROMPTS[2]  # 20-odd tokens: a partial last block, shared and then copied on write
    llm = make_llm(model, tok)
    out = llm.generate(prompt, SamplingParams(n=3, temperature=0, max_tokens=12, ignore_eos=True))[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    for c in out.outputs:  # copy-on-write kept every sample's KV intact
        assert c.token_ids == naive(out.prompt_token_ids)
    seeded = llm.generate(prompt, SamplingParams(n=2, temperature=1.0, seed=3, max_tokens=12, ignore_eos=True))[0]
    assert seeded.outputs[0].token_ids != seeded.outputs[1].token_ids
    # the children share the prompt's blocks: peak usage is far below 2 private copies
    engine = llm.engine
    engine.add_request("fork", out.prompt_token_ids, SamplingParams(n=2, temperature=0, max_tokens=4))
    engine.step()
    prompt_blocks = -(-len(out.prompt_token_ids) // 4)
    used = engine.stats()["num_blocks"] - engine.num_free_blocks
    assert used < 2 * prompt_blocks
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.num_free_blocks == engine.stats()["num_blocks"]


def test_queue_full_and_context_limits(model, tok):
    engine = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=64, max_waiting=2))
    engine.add_request("a", [5, 6, 7], GREEDY)
    engine.add_request("b", [5, 6, 7], GREEDY)
    with pytest.raises(QueueFullError):
        engine.add_request("c", [5, 6, 7], GREEDY)
    with pytest.raises(ValueError, match="context"):
        engine.add_request("d", list(range(5, 69)), GREEDY)  # 64 tokens: no room for one more
    with pytest.raises(ValueError, match="max_tokens"):
        engine.add_request("e", list(range(5, 60)), SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("f", [], GREEDY)
    # max_tokens=None fills the context
    engine2 = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=64))
    engine2.add_request("g", list(range(5, 55)), SamplingParams(max_tokens=None, temperature=0, ignore_eos=True))
    while engine2.has_unfinished_requests():
        for o in engine2.step().finished:
            assert len(o.token_ids) == 14 and o.outputs[0].finish_reason == "length"


def test_request_errors_are_invalid_argument_and_queue_full_is_resource_exhausted(model, tok):
    engine = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=64, max_waiting=1))
    V = model.config.vocab_size
    for ids, params, match in [
        ([], GREEDY, "empty"),
        ([5, V], GREEDY, "token ids"),
        ([5, -1], GREEDY, "token ids"),
        ([5, True], GREEDY, "token ids"),  # a bool is no token id
        (list(range(5, 60)), SamplingParams(max_tokens=10), "context"),
    ]:
        with pytest.raises(InvalidArgumentError, match=match):
            engine.make_request("x", ids, params)
    assert not engine.has_unfinished_requests()  # validation queues nothing
    no_tok = LLMEngine(model, None, EngineConfig(block_size=4, num_blocks=64))
    with pytest.raises(InvalidArgumentError, match="tokenizer"):
        no_tok.add_request("s", [5, 6], SamplingParams(stop="x"))
    # a request the whole KV pool could never hold would wait forever: refused up front
    small = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=3))
    with pytest.raises(InvalidArgumentError, match="KV blocks"):
        small.add_request("big", [5] * 10, SamplingParams(max_tokens=10))
    engine.add_request("a", [5, 6, 7], GREEDY)
    with pytest.raises(InvalidArgumentError, match="already in use"):
        engine.add(engine.make_request("a", [5, 6], GREEDY))
    with pytest.raises(ResourceExhaustedError):  # QueueFullError is one
        engine.add_request("b", [5, 6, 7], GREEDY)


def test_make_request_then_add(model, tok, naive):
    """make_request validates and builds (pure, any thread); add queues; the output is the same as add_request's."""
    engine = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=64))
    prompt = tok.encode(PROMPTS[1])
    group = engine.make_request("r", prompt, GREEDY, prompt=PROMPTS[1])
    assert group.max_tokens == GREEDY.max_tokens and not engine.has_unfinished_requests()
    assert engine.add(group) is group
    done = []
    while engine.has_unfinished_requests():
        done += engine.step().finished
    assert [o.request_id for o in done] == ["r"] and done[0].prompt == PROMPTS[1]
    assert done[0].token_ids == naive(prompt)
    # max_tokens=None resolves to the rest of the window
    assert engine.make_request("w", prompt, SamplingParams(max_tokens=None)).max_tokens == 64 - len(prompt)


def test_engine_config_reaches_scheduler_kv_cache_and_runner(model, tok):
    cfg = EngineConfig(
        block_size=8,
        num_blocks=20,
        max_num_seqs=3,
        max_num_batched_tokens=40,
        max_waiting=5,
        enable_prefix_caching=False,
        enable_chunked_prefill=False,
        max_model_len=32,
    )
    engine = LLMEngine(model, tok, cfg)
    s = engine.scheduler.config
    assert (s.max_num_seqs, s.max_num_batched_tokens, s.max_waiting, s.enable_chunked_prefill) == (3, 40, 5, False)
    assert engine.kv.block_size == 8 and engine.kv.pool.num_blocks == 20 and not engine.kv.enable_prefix_caching
    assert engine.runner.block_size == 8 and engine.runner.kv_caches[0][0].shape[:2] == (20, 8)
    assert engine.max_model_len == engine.output_processor.max_model_len == 32 == engine.config.max_model_len
    # unset fields are settled for the model: its window, and a pool sized from the defaults
    default = LLMEngine(model, tok)
    assert default.max_model_len == model.config.max_position_embeddings == 64
    assert default.kv.pool.num_blocks == EngineConfig.max_num_seqs * 64 // EngineConfig.block_size
    assert default.scheduler.config.max_num_seqs == EngineConfig.max_num_seqs
