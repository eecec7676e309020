"""Block pool and KV-cache manager bookkeeping on tiny pools (block size 4): exact block ids, free-list order,
prefix hits, lazy eviction, copy-on-write and reference counts."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from llm.kv_cache import (
    FreeBlockQueue,
    KVCacheBlock,
    KVCacheManager,
    allocate_kv_caches,
    copy_blocks,
    hash_block_tokens,
    kv_bytes_per_block,
    num_blocks_for_budget,
)


@dataclass
class Req:
    request_id: str
    all_token_ids: list[int]
    num_computed_tokens: int = 0
    extra: list[int] = field(default_factory=list)


def schedule(mgr: KVCacheManager, req: Req, num_new: int | None = None):
    """What the scheduler does for a step: prefix hits for a new request, allocate, then mark computed."""
    hits, n_hit = ([], 0) if req.request_id in mgr.req_to_blocks else mgr.get_computed_blocks(req.all_token_ids)
    num_new = len(req.all_token_ids) - req.num_computed_tokens - n_hit if num_new is None else num_new
    new = mgr.allocate_slots(req, num_new, hits, n_hit)
    if new is not None:
        req.num_computed_tokens += n_hit + num_new
    return new


def ids(blocks) -> list[int]:
    return [b.block_id for b in blocks]


def test_free_queue_o1_ops():
    blocks = [KVCacheBlock(i) for i in range(5)]
    q = FreeBlockQueue(blocks)
    q.remove(blocks[2])  # from the middle
    q.remove(blocks[4])  # the tail
    assert q.block_ids() == [0, 1, 3] and len(q) == 3
    assert q.popleft().block_id == 0
    q.append(blocks[2])
    assert q.block_ids() == [1, 3, 2]
    with pytest.raises(AssertionError):
        q.append(blocks[3])  # already queued
    for _ in range(3):
        q.popleft()
    with pytest.raises(IndexError):
        q.popleft()


def test_allocate_decode_free_order():
    mgr = KVCacheManager(num_blocks=10, block_size=4, enable_prefix_caching=True)
    r1 = Req("r1", list(range(100, 110)))  # 10 tokens
    assert ids(schedule(mgr, r1)) == [0, 1, 2]
    assert mgr.num_free_blocks == 7
    r2 = Req("r2", list(range(200, 206)))
    assert ids(schedule(mgr, r2)) == [3, 4]
    assert mgr.slot_mapping("r2", 0, 6) == [12, 13, 14, 15, 16, 17]
    for t in (110, 111):  # decode into the free room of r1's last block
        r1.all_token_ids.append(t)
        assert schedule(mgr, r1, 1) == []
    r1.all_token_ids.append(112)
    assert ids(schedule(mgr, r1, 1)) == [5]  # 13th token opens a block
    assert mgr.get_block_ids("r1") == [0, 1, 2, 5]
    assert mgr.slot_mapping("r1", 11, 2) == [11, 20]
    with pytest.raises(ValueError):
        mgr.slot_mapping("r1", 14, 3)  # beyond the allocated blocks
    mgr.free(r1)  # tail first: the last block is evicted first
    assert mgr.pool.free_queue.block_ids() == [6, 7, 8, 9, 5, 2, 1, 0]
    assert all(mgr.pool.blocks[i].ref_cnt == 0 for i in (0, 1, 2, 5))
    assert mgr.pool.blocks[3].ref_cnt == 1


def test_prefix_hits_and_lazy_eviction():
    mgr = KVCacheManager(num_blocks=10, block_size=4, enable_prefix_caching=True)
    prompt = list(range(13))
    r1 = Req("r1", prompt)
    schedule(mgr, r1)  # blocks 0..3; 0, 1, 2 full -> cached
    assert set(mgr.pool.cached.values()) == {mgr.pool.blocks[i] for i in (0, 1, 2)}
    hits, n = mgr.get_computed_blocks(prompt[:8] + [99] * 6)
    assert ids(hits) == [0, 1] and n == 8  # the miss in block 2 stops the chain
    hits, n = mgr.get_computed_blocks(prompt[:12])
    assert ids(hits) == [0, 1] and n == 8  # never all tokens: the last one is recomputed for its logits
    hits, _ = mgr.get_computed_blocks([7, 7, 7, 7] + prompt[4:12] + [1])
    assert hits == []  # same block content after a different parent is a different hash
    mgr.free(r1)
    assert mgr.pool.free_queue.block_ids() == [4, 5, 6, 7, 8, 9, 3, 2, 1, 0]

    # freed blocks keep their hashes: a new request hits them and takes them out of the middle of the queue
    r2 = Req("r2", prompt[:8] + [50, 51, 52, 53, 54, 55])
    assert ids(schedule(mgr, r2)) == [4, 5]
    assert mgr.get_block_ids("r2") == [0, 1, 4, 5]
    assert r2.num_computed_tokens == 14
    assert [mgr.pool.blocks[i].ref_cnt for i in (0, 1)] == [1, 1]
    assert mgr.pool.free_queue.block_ids() == [6, 7, 8, 9, 3, 2]
    assert ids(mgr.get_computed_blocks(prompt)[0]) == [0, 1, 2]  # block 2 still a hit while free

    # allocation pops 6..9, 3, 2 in order; only now is block 2's hash dropped
    r3 = Req("r3", list(range(500, 524)))
    assert ids(schedule(mgr, r3)) == [6, 7, 8, 9, 3, 2]
    assert ids(mgr.get_computed_blocks(prompt)[0]) == [0, 1]
    assert mgr.num_free_blocks == 0
    r4 = Req("r4", [1, 2, 3])
    assert schedule(mgr, r4) is None  # pool exhausted: the scheduler preempts
    assert "r4" not in mgr.req_to_blocks and r4.num_computed_tokens == 0


def test_evictable_hits_do_not_count_as_free():
    mgr = KVCacheManager(num_blocks=4, block_size=4, enable_prefix_caching=True)
    prompt = list(range(9))
    r1 = Req("r1", prompt)
    schedule(mgr, r1)  # blocks 0, 1, 2
    mgr.free(r1)
    too_long = Req("r2", prompt[:8] + list(range(100, 112)))  # 20 tokens: 2 hit blocks + 3 new > 4 - 2 free
    assert schedule(mgr, too_long) is None
    assert mgr.pool.free_queue.block_ids() == [3, 2, 1, 0] and mgr.pool.blocks[0].ref_cnt == 0
    fits = Req("r3", prompt[:8] + list(range(100, 108)))  # 16 tokens: 2 hits + 2 new
    assert ids(schedule(mgr, fits)) == [3, 2]
    assert mgr.get_block_ids("r3") == [0, 1, 3, 2] and mgr.num_free_blocks == 0


def test_fork_copy_on_write():
    mgr = KVCacheManager(num_blocks=6, block_size=4, enable_prefix_caching=True)
    parent = Req("p", [1, 2, 3, 4, 5, 6])
    schedule(mgr, parent)  # blocks 0 (full, cached), 1 (2 of 4 slots used)
    child = Req("c", [1, 2, 3, 4, 5, 6], num_computed_tokens=6)
    mgr.fork(parent, child)
    assert mgr.get_block_ids("c") == [0, 1]
    assert [mgr.pool.blocks[i].ref_cnt for i in (0, 1)] == [2, 2]

    parent.all_token_ids.append(10)
    child.all_token_ids.append(20)
    assert schedule(mgr, parent, 1) == []  # no new block, but the shared partial block is copied first
    assert mgr.get_block_ids("p") == [0, 2]
    assert mgr.take_pending_copies() == [(1, 2)]
    assert mgr.take_pending_copies() == []
    assert schedule(mgr, child, 1) == []  # block 1 is now the child's alone: written in place
    assert mgr.get_block_ids("c") == [0, 1] and mgr.take_pending_copies() == []
    assert [mgr.pool.blocks[i].ref_cnt for i in (0, 1, 2)] == [2, 1, 1]

    parent.all_token_ids.append(11)  # fills the parent's copy: cached under the parent's own tokens
    assert schedule(mgr, parent, 1) == []
    assert mgr.pool.blocks[2].block_hash is not None and mgr.pool.blocks[1].block_hash is None
    mgr.free(parent)
    assert mgr.pool.blocks[0].ref_cnt == 1 and mgr.pool.free_queue.block_ids() == [3, 4, 5, 2]
    mgr.free(child)
    assert mgr.pool.free_queue.block_ids() == [3, 4, 5, 2, 1, 0]

    with pytest.raises(ValueError):
        mgr.fork("nobody", "x")


def test_cow_fails_cleanly_when_pool_is_full():
    mgr = KVCacheManager(num_blocks=2, block_size=4, enable_prefix_caching=True)
    parent = Req("p", [1, 2, 3, 4, 5])
    schedule(mgr, parent)
    child = Req("c", [1, 2, 3, 4, 5], num_computed_tokens=5)
    mgr.fork(parent, child)
    parent.all_token_ids.append(9)
    assert schedule(mgr, parent, 1) is None  # the copy needs a free block
    assert mgr.get_block_ids("p") == [0, 1] and mgr.take_pending_copies() == []
    mgr.free(child)  # with the child gone the block is private again: no copy needed
    assert schedule(mgr, parent, 1) == [] and mgr.take_pending_copies() == []


def test_prefix_caching_disabled():
    mgr = KVCacheManager(num_blocks=4, block_size=4, enable_prefix_caching=False)
    r1 = Req("r1", list(range(9)))
    schedule(mgr, r1)
    mgr.free(r1)
    assert mgr.get_computed_blocks(list(range(9))) == ([], 0)
    assert not mgr.pool.cached


def test_hash_chain_and_memory_helpers():
    h1 = hash_block_tokens(None, [1, 2, 3, 4])
    assert h1 == hash_block_tokens(None, [1, 2, 3, 4]) and len(h1) == 32
    assert hash_block_tokens(h1, [5, 6, 7, 8]) != hash_block_tokens(None, [5, 6, 7, 8])

    per_block = kv_bytes_per_block(num_layers=3, num_kv_heads=2, head_dim=8, block_size=4, dtype=torch.bfloat16)
    n = num_blocks_for_budget(10 * per_block + per_block // 2, 3, 2, 8, 4, torch.bfloat16)
    assert n == 10
    caches = allocate_kv_caches(3, n, 4, 2, 8, dtype=torch.bfloat16)
    assert len(caches) == 3 and caches[0][0].shape == (10, 4, 2, 8)
    assert sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in caches) == n * per_block
    with pytest.raises(ValueError):
        num_blocks_for_budget(per_block - 1, 3, 2, 8, 4, torch.bfloat16)

    for k, v in caches:
        k[1].fill_(1.5)
        v[1].fill_(-2.0)
    copy_blocks(caches, [(1, 7)])
    assert all(torch.equal(k[7], k[1]) and torch.equal(v[7], v[1]) for k, v in caches)
    assert caches[2][0][7].float().mean().item() == 1.5
