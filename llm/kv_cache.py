"""Paged KV-cache memory management (vLLM v1 design): a block pool with an O(1) LRU free list, reference counts,
prefix caching by chained block hashes with lazy eviction, copy-on-write for forked sequences.

Only bookkeeping lives here (Python ints and lists); the cache tensors are plain (num_blocks, block_size, Hkv, D)
pairs per layer (`allocate_kv_caches`), indexed through block tables and slot mappings.

Lifecycle of a block: free (in the free queue, maybe still holding a hash = a cached prefix block that can be hit)
-> allocated (ref_cnt >= 1, out of the queue) -> freed when the last owner releases it: back to the queue's tail,
hash kept. Allocation pops the queue's head (least recently freed) and only then forgets its hash (lazy eviction).
A request frees its blocks tail first, so its last (least shareable) blocks are evicted before its prefix.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from common.errors import InvalidArgumentError

BlockHash = bytes
ROOT_HASH: BlockHash = b"\x00" * 32  # parent of a sequence's first block


def hash_block_tokens(parent: BlockHash | None, token_ids: Sequence[int], extra: bytes = b"") -> BlockHash:
    """sha256(parent hash, tokens, extra): equal hashes mean equal whole prefixes, not just equal blocks.
    A cryptographic hash, because a collision would silently serve another prompt's KV."""
    h = hashlib.sha256(parent or ROOT_HASH)
    h.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    h.update(extra)
    return h.digest()


def hash_full_blocks(
    token_ids: Sequence[int],
    block_size: int,
    parent: BlockHash | None = None,
    start_block: int = 0,
    extra: bytes = b"",
) -> list[BlockHash]:
    """Chained hashes of the full blocks start_block, start_block+1, ... of token_ids (a partial tail has none)."""
    hashes = []
    for b in range(start_block, len(token_ids) // block_size):
        parent = hash_block_tokens(parent, token_ids[b * block_size : (b + 1) * block_size], extra)
        hashes.append(parent)
    return hashes


@dataclass(eq=False)
class KVCacheBlock:
    block_id: int
    ref_cnt: int = 0
    block_hash: BlockHash | None = None  # set while the block is in the prefix cache (full, registered)
    prev_free: KVCacheBlock | None = field(default=None, repr=False)  # free-queue links; None when not queued
    next_free: KVCacheBlock | None = field(default=None, repr=False)


class FreeBlockQueue:
    """Doubly linked list of free blocks with sentinels: popleft, append and remove-from-the-middle in O(1).
    Removal from the middle is what a prefix-cache hit on a free (evictable) block needs."""

    def __init__(self, blocks: Iterable[KVCacheBlock]):
        self._head = KVCacheBlock(-1)
        self._tail = KVCacheBlock(-1)
        self._head.next_free, self._tail.prev_free = self._tail, self._head
        self.num_free = 0
        for b in blocks:
            self.append(b)

    def __len__(self) -> int:
        return self.num_free

    def append(self, block: KVCacheBlock) -> None:
        assert block.prev_free is None and block.next_free is None, f"block {block.block_id} already queued"
        last = self._tail.prev_free
        assert last is not None
        last.next_free, block.prev_free = block, last
        block.next_free, self._tail.prev_free = self._tail, block
        self.num_free += 1

    def remove(self, block: KVCacheBlock) -> None:
        prev, nxt = block.prev_free, block.next_free
        assert prev is not None and nxt is not None, f"block {block.block_id} is not in the free queue"
        prev.next_free, nxt.prev_free = nxt, prev
        block.prev_free = block.next_free = None
        self.num_free -= 1

    def popleft(self) -> KVCacheBlock:
        first = self._head.next_free
        if first is self._tail or first is None:
            raise IndexError("no free blocks")
        self.remove(first)
        return first

    def block_ids(self) -> list[int]:
        """Free block ids in eviction order (head first); O(n), for tests and debugging."""
        out, b = [], self._head.next_free
        while b is not None and b is not self._tail:
            out.append(b.block_id)
            b = b.next_free
        return out


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool):
        assert num_blocks >= 1, num_blocks  # EngineConfig checked it
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.cached: dict[BlockHash, KVCacheBlock] = {}  # prefix cache: hash -> block (allocated or free)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def get_cached_block(self, block_hash: BlockHash) -> KVCacheBlock | None:
        return self.cached.get(block_hash)

    def get_new_blocks(self, n: int) -> list[KVCacheBlock] | None:
        """n blocks with ref_cnt 1, least recently freed first; cached ones are evicted now. None if short."""
        if n > self.num_free_blocks:
            return None
        out = []
        for _ in range(n):
            b = self.free_queue.popleft()
            assert b.ref_cnt == 0
            self._evict(b)
            b.ref_cnt = 1
            out.append(b)
        return out

    def _evict(self, block: KVCacheBlock) -> None:
        if block.block_hash is not None:
            if self.cached.get(block.block_hash) is block:
                del self.cached[block.block_hash]
            block.block_hash = None

    def touch(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Take a reference on (prefix-hit or shared) blocks; a free one leaves the queue but keeps its hash."""
        for b in blocks:
            if b.ref_cnt == 0:
                self.free_queue.remove(b)
            b.ref_cnt += 1

    def free_blocks(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Drop one reference each, in the given order; blocks reaching 0 join the queue tail (hash kept)."""
        for b in blocks:
            assert b.ref_cnt > 0, f"double free of block {b.block_id}"
            b.ref_cnt -= 1
            if b.ref_cnt == 0:
                if not self.enable_caching:
                    b.block_hash = None
                self.free_queue.append(b)

    def cache_block(self, block: KVCacheBlock, block_hash: BlockHash) -> None:
        """Register a full block under its chained hash. If another block already holds the hash (two requests
        computed the same prefix at once) the first stays canonical and this one remains private."""
        if not self.enable_caching or block.block_hash is not None:
            return
        if block_hash not in self.cached:
            self.cached[block_hash] = block
            block.block_hash = block_hash

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash (e.g. after loading new weights). Only when nothing is allocated."""
        if self.num_free_blocks != self.num_blocks:
            return False
        for b in self.blocks:
            b.block_hash = None
        self.cached.clear()
        return True


class KVRequest(Protocol):
    """What the manager reads from a request (the engine's Request class provides these)."""

    request_id: str
    num_computed_tokens: int  # tokens whose K/V are already in the cache

    @property
    def all_token_ids(self) -> Sequence[int]: ...  # prompt + generated tokens so far


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def compute_slot_mapping(block_ids: Sequence[int], start: int, num_tokens: int, block_size: int) -> list[int]:
    """Cache slots of positions start .. start+num_tokens-1 of a sequence whose blocks are block_ids."""
    return [block_ids[p // block_size] * block_size + p % block_size for p in range(start, start + num_tokens)]


class KVCacheManager:
    """Per-request block tables over a BlockPool, for the scheduler.

    Typical step for a request: `get_computed_blocks(tokens)` (new requests: prefix-cache hits), then
    `allocate_slots(req, num_new_tokens, hits, num_hit_tokens)`; None means "not enough memory, preempt someone".
    After the step the scheduler advances req.num_computed_tokens. Copy-on-write block copies to run before the
    forward are collected in `take_pending_copies()`.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool):
        assert block_size >= 1, block_size  # EngineConfig checked it
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, enable_caching=enable_prefix_caching)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        self.req_to_hashes: dict[str, list[BlockHash]] = {}  # chained hashes of the request's full blocks
        self._pending_copies: list[tuple[int, int]] = []  # (src block, dst block) COW copies not yet executed

    # ---- queries ----------------------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    def usage(self) -> float:
        return self.pool.usage()

    def get_block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self.req_to_blocks.get(request_id, [])]

    def slot_mapping(self, request_id: str, start: int, num_tokens: int) -> list[int]:
        """Slots of the request's positions start .. start+num_tokens-1 (they must be allocated)."""
        ids = self.get_block_ids(request_id)
        if cdiv(start + num_tokens, self.block_size) > len(ids):
            raise ValueError(f"request {request_id!r}: positions up to {start + num_tokens} are not allocated")
        return compute_slot_mapping(ids, start, num_tokens, self.block_size)

    def get_computed_blocks(self, token_ids: Sequence[int]) -> tuple[list[KVCacheBlock], int]:
        """Longest cached prefix of token_ids in whole blocks -> (blocks, num_tokens). Takes no reference (pass the
        blocks to allocate_slots). At most len-1 tokens hit, so the last token is recomputed for its logits."""
        if not self.enable_prefix_caching or len(token_ids) < 2:
            return [], 0
        hits: list[KVCacheBlock] = []
        parent = None
        for b in range((len(token_ids) - 1) // self.block_size):
            parent = hash_block_tokens(parent, token_ids[b * self.block_size : (b + 1) * self.block_size])
            block = self.pool.get_cached_block(parent)
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * self.block_size

    # ---- allocation -------------------------------------------------------------------------------------------
    def allocate_slots(
        self,
        request: KVRequest,
        num_new_tokens: int,
        new_computed_blocks: Sequence[KVCacheBlock] = (),
        num_new_computed_tokens: int = 0,
    ) -> list[KVCacheBlock] | None:
        """Blocks for num_new_tokens more tokens after request.num_computed_tokens (+ num_new_computed_tokens of
        prefix hits, attached first). Returns the newly allocated blocks ([] if none needed), or None - with
        nothing changed - when the pool cannot provide them. Full blocks are registered in the prefix cache."""
        if num_new_tokens < 1:
            raise ValueError(f"num_new_tokens must be >= 1, got {num_new_tokens}")
        rid = request.request_id
        blocks = self.req_to_blocks.get(rid, [])
        if new_computed_blocks and blocks:
            raise ValueError("prefix hits can only be attached to a request that holds no blocks yet")
        num_computed = request.num_computed_tokens + num_new_computed_tokens
        assert num_new_computed_tokens == len(new_computed_blocks) * self.block_size
        total = num_computed + num_new_tokens
        num_new_blocks = cdiv(total, self.block_size) - len(blocks) - len(new_computed_blocks)
        # Copy-on-write: writing into a partial last block that a fork shares needs a private copy first.
        cow = bool(blocks) and num_computed % self.block_size != 0 and blocks[-1].ref_cnt > 1
        # Hits that sit in the free queue are not free for this request: touching them takes them out.
        evictable_hits = sum(1 for b in new_computed_blocks if b.ref_cnt == 0)
        if max(num_new_blocks, 0) + int(cow) > self.pool.num_free_blocks - evictable_hits:
            return None
        if new_computed_blocks:
            self.pool.touch(new_computed_blocks)
            blocks = list(new_computed_blocks)
            self.req_to_hashes[rid] = [b.block_hash for b in new_computed_blocks]  # type: ignore[misc]
        self.req_to_blocks[rid] = blocks
        if cow:
            (copy,) = self.pool.get_new_blocks(1)  # type: ignore[misc]
            self._pending_copies.append((blocks[-1].block_id, copy.block_id))
            self.pool.free_blocks([blocks[-1]])
            blocks[-1] = copy
        new = self.pool.get_new_blocks(max(num_new_blocks, 0)) or []
        blocks.extend(new)
        if self.enable_prefix_caching:
            self._cache_full_blocks(request, blocks, total)
        return new

    def _cache_full_blocks(self, request: KVRequest, blocks: list[KVCacheBlock], num_tokens: int) -> None:
        # Only tokens we know: the last scheduled token may be a placeholder not yet in all_token_ids.
        tokens = request.all_token_ids
        num_full = min(num_tokens, len(tokens)) // self.block_size
        hashes = self.req_to_hashes.setdefault(request.request_id, [])
        if num_full <= len(hashes):
            return
        parent = hashes[-1] if hashes else None
        new = hash_full_blocks(tokens[: num_full * self.block_size], self.block_size, parent, len(hashes))
        for i, h in enumerate(new, start=len(hashes)):
            self.pool.cache_block(blocks[i], h)
        hashes.extend(new)

    def free(self, request: KVRequest | str) -> None:
        """Release a finished or preempted request's blocks, tail first (evicted before the shared prefix)."""
        rid = request if isinstance(request, str) else request.request_id
        blocks = self.req_to_blocks.pop(rid, [])
        self.req_to_hashes.pop(rid, None)
        self.pool.free_blocks(reversed(blocks))

    def trim(self, request: KVRequest) -> None:
        """Roll back to request.num_computed_tokens (speculative decoding, after rejected drafts): free the blocks
        past the ones that hold its computed tokens, tail first. Rejected slots in the last kept block are simply
        overwritten by the next step. Hashed (prefix-cached) blocks only ever cover committed tokens, so they stay."""
        blocks = self.req_to_blocks.get(request.request_id, [])
        keep = cdiv(request.num_computed_tokens, self.block_size)
        assert len(self.req_to_hashes.get(request.request_id, [])) <= keep, "a hashed block held rejected tokens"
        if len(blocks) > keep:
            self.pool.free_blocks(reversed(blocks[keep:]))
            del blocks[keep:]

    def fork(self, parent: KVRequest | str, child: KVRequest | str) -> None:
        """Child shares all of parent's blocks (parallel sampling, n > 1); a shared partial last block is copied
        on the first write by either side (see allocate_slots / take_pending_copies)."""
        pid = parent if isinstance(parent, str) else parent.request_id
        cid = child if isinstance(child, str) else child.request_id
        if cid in self.req_to_blocks:
            raise ValueError(f"request {cid!r} already holds blocks")
        blocks = self.req_to_blocks.get(pid)
        if blocks is None:
            raise ValueError(f"request {pid!r} holds no blocks to fork")
        self.pool.touch(blocks)
        self.req_to_blocks[cid] = list(blocks)
        self.req_to_hashes[cid] = list(self.req_to_hashes.get(pid, []))

    def take_pending_copies(self) -> list[tuple[int, int]]:
        """(src, dst) block copies the engine must apply (`copy_blocks`) before the next forward."""
        out, self._pending_copies = self._pending_copies, []
        return out

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset_prefix_cache()


# ---- cache tensors ---------------------------------------------------------------------------------------------
def kv_bytes_per_block(num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype) -> int:
    """Bytes of one block across all layers, K and V."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * block_size * num_kv_heads * head_dim * itemsize


def num_blocks_for_budget(
    budget_bytes: int, num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
) -> int:
    """How many blocks fit in budget_bytes of cache memory."""
    per_block = kv_bytes_per_block(num_layers, num_kv_heads, head_dim, block_size, dtype)
    n = budget_bytes // per_block
    if n < 1:
        raise InvalidArgumentError(
            f"a KV budget of {budget_bytes} bytes does not fit one block ({per_block} bytes); raise kv_cache_memory "
            f"or shrink block_size"
        )
    return int(n)


def allocate_kv_caches(
    num_layers: int,
    num_blocks: int,
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer a (k_cache, v_cache) pair of (num_blocks, block_size, Hkv, D) zeros; views of one allocation."""
    kv = torch.zeros((num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim), dtype=dtype, device=device)
    return [(kv[i, 0], kv[i, 1]) for i in range(num_layers)]


def copy_blocks(kv_caches: Sequence[tuple[torch.Tensor, torch.Tensor]], copies: Sequence[tuple[int, int]]) -> None:
    """Apply copy-on-write block copies (src, dst) in every layer's K and V cache."""
    if not copies:
        return
    device = kv_caches[0][0].device
    src = torch.tensor([s for s, _ in copies], dtype=torch.int64, device=device)
    dst = torch.tensor([d for _, d in copies], dtype=torch.int64, device=device)
    for k_cache, v_cache in kv_caches:
        k_cache[dst] = k_cache[src]
        v_cache[dst] = v_cache[src]
