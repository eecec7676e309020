"""Scheduler policy without a model: token budget, decode-first order, chunked prefill, max_num_seqs, preemption
(newest first, recompute), the bounded queue, abort and prefix-cache accounting. A fake 'model' appends token 7
to every sequence whose chunk reached its end."""

from __future__ import annotations

import pytest

from common.errors import InvalidArgumentError, ResourceExhaustedError
from llm.engine_config import EngineConfig
from llm.kv_cache import KVCacheManager
from llm.request import RequestGroup, Sequence, SequenceStatus
from llm.sampler import SamplingParams
from llm.scheduler import QueueFullError, Scheduler, SchedulerConfig


def make_seq(group, index, order):
    params = group.params if group.params.n == 1 else group.params.child(index)
    return Sequence(group, index, params, None, order)


def make(num_blocks=64, block_size=4, caching=True, **options) -> Scheduler:
    """A scheduler and its KV cache manager built from one EngineConfig, as the engine builds them."""
    cfg = EngineConfig(num_blocks=num_blocks, block_size=block_size, enable_prefix_caching=caching, **options)
    return Scheduler(SchedulerConfig.from_engine(cfg), KVCacheManager(num_blocks, block_size, caching))


def add(s: Scheduler, rid: str, n_tokens: int, start: int | None = None, n: int = 1) -> Sequence:
    start = 1000 * ord(rid[0]) if start is None else start  # distinct prompts: no accidental prefix hits
    return s.add(RequestGroup(rid, list(range(start, start + n_tokens)), SamplingParams(n=n)), make_seq)


def fake_step(s: Scheduler):
    out = s.schedule()
    for item in out.scheduled:
        if item.samples:
            item.seq.append_token(7)
    return out


def plan(out) -> dict[str, int]:
    return {x.seq.request_id: x.num_new for x in out.scheduled}


def test_budget_chunked_prefill_and_decode_first():
    s = make(max_num_batched_tokens=10)
    add(s, "a", 6)
    add(s, "b", 9)
    out = fake_step(s)
    assert plan(out) == {"a": 6, "b": 4}  # b's prompt is chunked to the remaining budget
    assert out.num_prefill_seqs == 2
    out = fake_step(s)
    # a decodes first (1 token), then b's prefill continues with what is left
    assert [x.seq.request_id for x in out.scheduled] == ["b", "a"]  # forward layout: prefill chunk first
    assert plan(out) == {"a": 1, "b": 5}
    assert out.scheduled[0].num_computed == 4 and out.scheduled[0].samples
    out = fake_step(s)
    assert plan(out) == {"a": 1, "b": 1} and out.num_prefill_seqs == 0


def test_no_chunking_waits_for_budget():
    s = make(num_blocks=128, max_num_batched_tokens=300, enable_chunked_prefill=False)
    add(s, "a", 200)
    add(s, "b", 150)
    assert plan(fake_step(s)) == {"a": 200}  # b does not fit the rest of the budget and is not split
    assert plan(fake_step(s)) == {"a": 1, "b": 150}
    # (that a prompt up to max_model_len fits the budget without chunking is EngineConfig.resolve's check: see
    # test_engine_config.py)


def test_max_num_seqs_and_n_reserves_slots():
    s = make(max_num_seqs=3)
    add(s, "a", 3)
    add(s, "b", 3, n=2)  # needs 2 slots for its 2 samples
    add(s, "c", 3)
    assert set(plan(fake_step(s))) == {"a", "b"}
    assert s.num_running == 2 and s.num_waiting == 1


def test_preemption_newest_first_and_recompute():
    # 6 blocks of 4 tokens: two sequences of 8 prompt tokens use 4 blocks, then grow until the pool runs out.
    s = make(num_blocks=6, block_size=4, max_num_batched_tokens=64)
    a = add(s, "a", 8)
    b = add(s, "b", 8, start=300)
    fake_step(s)
    preempted = []
    for _ in range(6):
        out = fake_step(s)
        preempted += [p.request_id for p in out.preempted]
        if preempted:
            break
    assert preempted == ["b"]  # the newer request goes
    assert b.status is SequenceStatus.PREEMPTED and b.num_computed_tokens == 0 and s.waiting[0] is b
    assert a.status is SequenceStatus.RUNNING and s.num_preemptions == 1
    assert s.kv.get_block_ids("b") == []
    # finishing a lets b come back: it recomputes prompt + its generated tokens in one chunk
    s.finish(a, "length")
    out = fake_step(s)
    assert list(plan(out)) == ["b"] and out.scheduled[0].samples  # its full blocks may hit the prefix cache
    assert out.scheduled[0].num_computed % 4 == 0 and b.num_computed_tokens == b.num_tokens - 1
    assert b.status is SequenceStatus.RUNNING


def test_preempts_self_when_it_is_the_newest():
    s = make(num_blocks=3, block_size=4, max_num_batched_tokens=64)
    a = add(s, "a", 4)
    b = add(s, "b", 4, start=300)
    fake_step(s)  # a: 1 block + b: 1 block... each grows into a second block on the next decode
    out = fake_step(s)
    assert [p.request_id for p in out.preempted] == ["b"]
    assert "a" in plan(out) and "b" not in plan(out)
    assert a.status is SequenceStatus.RUNNING and b.status is SequenceStatus.PREEMPTED


def test_unscheduled_victim_leaves_no_unwritten_blocks_in_prefix_cache():
    """A decode scheduled first in the step fills a block (registered in the prefix cache at allocation); an older
    request's prefill chunk then preempts it. The block was never written, so it must not stay hittable. (The pool
    also recycles such a block first, tail-first freeing; _uncache_unwritten makes it independent of that.)"""
    s = make(num_blocks=2, block_size=4, max_num_batched_tokens=5)
    b = add(s, "b", 2)
    fake_step(s)  # b: 2 prompt tokens in, 1 sampled
    a = add(s, "a", 20)
    a.order = (0, 0)  # older than b (as a re-admitted preempted request would be)
    assert plan(fake_step(s)) == {"b": 1, "a": 4}
    out = fake_step(s)  # b's decode fills its block, then a's chunk needs a block: b is taken back out
    assert [p.request_id for p in out.preempted] == ["b"] and plan(out) == {"a": 4}
    assert s.kv.get_computed_blocks(b.all_token_ids + [7])[0] == []
    # the helper itself: a full block registered at allocation but not yet written loses its hash
    s = make(num_blocks=4, block_size=4)
    c = add(s, "c", 3)
    assert s.kv.allocate_slots(c, 3) is not None
    c.num_computed_tokens = 3
    c.append_token(7)
    assert s.kv.allocate_slots(c, 1) is not None  # scheduled decode: block 0 is full and hashed before the forward
    assert s.kv.get_computed_blocks(c.all_token_ids + [7])[1] == 4
    s._uncache_unwritten(c, 0)
    assert s.kv.get_computed_blocks(c.all_token_ids + [7])[1] == 0


def test_queue_full_and_duplicate_ids():
    s = make(max_waiting=2)
    add(s, "a", 3)
    add(s, "b", 3)
    with pytest.raises(QueueFullError, match="full"):
        add(s, "c", 3)
    with pytest.raises(InvalidArgumentError, match="already in use"):
        add(s, "a", 3)
    fake_step(s)  # both admitted: room again
    add(s, "c", 3)
    s.check_queue(num_pending=0)  # one waiting of two
    with pytest.raises(QueueFullError):
        s.check_queue(num_pending=1)  # one more on its way (AsyncLLM's inbox) fills it
    assert issubclass(QueueFullError, ResourceExhaustedError)  # the service's RESOURCE_EXHAUSTED


def test_abort_frees_blocks_at_once():
    s = make(num_blocks=16)
    add(s, "a", 10)
    add(s, "b", 10, n=2)
    out = fake_step(s)
    b = [x.seq for x in out.scheduled if x.seq.request_id == "b"][0]
    s.fork(b, make_seq)  # as the engine does after b's prefill
    assert s.kv.num_free_blocks < 16
    assert s.abort("b").request_id == "b"
    assert s.abort("b") is None
    s.abort("a")
    assert s.kv.num_free_blocks == 16 and not s.has_unfinished()


def test_prefix_cache_hits_are_counted():
    s = make(num_blocks=32, block_size=4)
    a = add(s, "a", 13, start=0)
    fake_step(s)
    s.finish(a, "stop")
    add(s, "b", 13, start=0)  # same prompt: 3 full blocks hit (the last token is always recomputed)
    out = fake_step(s)
    assert plan(out) == {"b": 1} and out.scheduled[0].num_computed == 12
    assert s.prefix_hit_tokens == 12 and s.prefix_queried_tokens == 26
