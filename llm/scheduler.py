"""Continuous-batching scheduler (vLLM v1 structure): every step it decides how many new tokens each sequence runs.

There are no prefill/decode phases: a sequence simply has num_tokens (prompt + sampled) and num_computed_tokens (in
the KV cache), and a step runs part or all of the difference under a token budget:

1. running sequences that decode (one token each) - latency of live streams first;
2. running sequences in the middle of a chunked prefill (the chunk is cut to the remaining budget);
3. waiting sequences, first come first served (preempted ones at the front), while the budget, max_num_seqs and the
   KV pool allow; their prompts may start with prefix-cache hits and may be chunked too.

When the pool cannot give a running sequence its next block, the newest running sequence is preempted (its blocks
freed, to be recomputed from scratch later - cheaper than swapping on this scale), repeatedly, until the allocation
fits or the sequence itself was the newest. Requests join (`add`) and leave (`finish`, `abort`) between steps.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from common.errors import InvalidArgumentError, ResourceExhaustedError
from llm.engine_config import EngineConfig
from llm.kv_cache import KVCacheManager, cdiv
from llm.request import RequestGroup, Sequence, SequenceStatus


class QueueFullError(ResourceExhaustedError):
    """The waiting queue holds max_waiting requests; the caller should retry later (gRPC: RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class SchedulerConfig:
    """What the scheduler reads; EngineConfig holds the values and their defaults (see its field comments)."""

    max_num_seqs: int  # sequences running at once (rows of the decode batch)
    max_num_batched_tokens: int  # tokens per step, prefill chunks + decodes
    max_waiting: int  # requests queued, not yet running; beyond this add() raises QueueFullError
    enable_chunked_prefill: bool  # split a long prompt over steps instead of waiting for a free budget

    @classmethod
    def from_engine(cls, config: EngineConfig) -> SchedulerConfig:
        """The scheduling fields of an EngineConfig (same names), so each value and default is written once."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_computed: int  # tokens in the cache before this step (the chunk's start position)
    num_new: int  # tokens run this step (draft tokens included)
    samples: bool = field(init=False)  # the chunk reaches the last known token: its logits give the next one
    draft: list[int] = field(default_factory=list)  # speculative tokens run after the last known one (llm.speculative)

    def __post_init__(self) -> None:
        self.samples = self.num_computed + self.num_new == self.seq.num_tokens + len(self.draft)


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq]  # forward layout: chunks with > 1 token first, then single-token ones
    num_prefill_seqs: int  # scheduled[:num_prefill_seqs] have num_new > 1
    preempted: list[Sequence] = field(default_factory=list)
    block_copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write, apply before the forward

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new for s in self.scheduled)

    @property
    def empty(self) -> bool:
        return not self.scheduled


def _slots(seq: Sequence) -> int:
    """Rows of max_num_seqs a sequence takes: a group's first sequence reserves room for the n-1 it will fork."""
    return 1 if seq.group.forked else seq.group.params.n


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager):
        self.config = config
        self.kv = kv
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []
        self.groups: dict[str, RequestGroup] = {}
        self._counter = 0
        # engine-level counters
        self.num_preemptions = 0
        self.prefix_queried_tokens = 0
        self.prefix_hit_tokens = 0

    # ---- admission ----------------------------------------------------------------------------------------------
    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        """A sequence that could never fit the whole KV pool would wait (or be preempted) forever."""
        need = cdiv(num_prompt_tokens + max_tokens, self.kv.block_size)
        if need > self.kv.pool.num_blocks:
            raise InvalidArgumentError(
                f"prompt ({num_prompt_tokens} tokens) + max_tokens ({max_tokens}) needs {need} KV blocks but the "
                f"cache holds {self.kv.pool.num_blocks}; lower max_tokens or give the engine more KV memory"
            )

    def check_queue(self, num_pending: int = 0) -> None:
        """Raise QueueFullError when the waiting queue (plus num_pending requests on their way to it) is full."""
        if len(self.waiting) + num_pending >= self.config.max_waiting:
            raise QueueFullError(f"the waiting queue is full ({self.config.max_waiting} requests); retry later")

    def add(self, group: RequestGroup, make_seq) -> Sequence:
        """Queue a group's first sequence (make_seq(group, index, order) builds it). Raises QueueFullError."""
        if group.request_id in self.groups:
            raise InvalidArgumentError(f"request id {group.request_id!r} is already in use")
        self.check_queue()
        self._counter += 1
        seq = make_seq(group, 0, (self._counter, 0))
        group.seqs.append(seq)
        self.groups[group.request_id] = group
        self.waiting.append(seq)
        return seq

    def fork(self, parent: Sequence, make_seq) -> list[Sequence]:
        """After parent's prompt prefill: n-1 children sharing its blocks, running from now on."""
        group = parent.group
        children = []
        for i in range(1, group.params.n):
            child = make_seq(group, i, (parent.order[0], i))
            child.num_computed_tokens = parent.num_computed_tokens
            self.kv.fork(parent, child)
            child.status = SequenceStatus.RUNNING
            group.seqs.append(child)
            self.running.append(child)
            children.append(child)
        group.forked = True
        return children

    # ---- the step -----------------------------------------------------------------------------------------------
    def schedule(self, drafts: Mapping[str, list[int]] | None = None) -> SchedulerOutput:
        """drafts: speculative tokens by request id for running sequences that decode (llm.speculative); a draft is
        cut to the token budget, and dropped before anyone is preempted for its blocks."""
        budget = self.config.max_num_batched_tokens
        chosen: dict[str, ScheduledSeq] = {}
        preempted: list[Sequence] = []

        def preempt_newest(for_seq: Sequence) -> Sequence:
            nonlocal budget
            victim = max(self.running, key=lambda s: s.order)
            if victim.request_id in chosen:  # already scheduled this step: give its tokens back
                item = chosen.pop(victim.request_id)
                budget += item.num_new
                self._uncache_unwritten(victim, item.num_computed)
            self._preempt(victim)
            preempted.append(victim)
            return victim

        # 1-2: running sequences, decodes before prefill chunks, oldest first within each.
        for seq in sorted(self.running, key=lambda s: (s.num_tokens - s.num_computed_tokens > 1, s.order)):
            if budget <= 0:
                break
            if seq.status is not SequenceStatus.RUNNING:  # preempted earlier in this loop
                continue
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            draft = drafts.get(seq.request_id, [])[: budget - num_new] if drafts else []
            assert not draft or seq.num_tokens - seq.num_computed_tokens == 1, "drafts follow a decode token"
            while self.kv.allocate_slots(seq, num_new + len(draft)) is None:
                if draft:
                    draft = []
                elif preempt_newest(seq) is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                num_new += len(draft)
                chosen[seq.request_id] = ScheduledSeq(seq, seq.num_computed_tokens, num_new, draft)
                budget -= num_new

        # 3: waiting sequences, FCFS; a preemption this step means memory is short, so admit nobody new.
        while self.waiting and budget > 0 and not preempted:
            seq = self.waiting[0]
            if self._slots_in_use() + _slots(seq) > self.config.max_num_seqs:
                break
            hits, num_hit = self.kv.get_computed_blocks(seq.all_token_ids)
            num_new = seq.num_tokens - num_hit
            if num_new > budget:
                if not self.config.enable_chunked_prefill:
                    break
                num_new = budget
            if self.kv.allocate_slots(seq, num_new, hits, num_hit) is None:
                break  # not enough free blocks; it stays first in line
            self.waiting.popleft()
            metrics = seq.group.metrics
            if seq.status is SequenceStatus.WAITING:  # first admission (not a resumed preemption)
                self.prefix_queried_tokens += seq.num_tokens
                self.prefix_hit_tokens += num_hit
                metrics.num_cached_tokens = num_hit
            seq.status = SequenceStatus.RUNNING
            seq.num_computed_tokens = num_hit
            self.running.append(seq)
            chosen[seq.request_id] = ScheduledSeq(seq, num_hit, num_new)
            budget -= num_new

        scheduled = list(chosen.values())
        # Forward layout: multi-token chunks first (attention.build_attention_metadata's contract), then decodes.
        prefills = [s for s in scheduled if s.num_new > 1]
        decodes = [s for s in scheduled if s.num_new == 1]
        for s in scheduled:
            s.seq.num_computed_tokens = s.num_computed + s.num_new  # the forward will have written them
        return SchedulerOutput(prefills + decodes, len(prefills), preempted, self.kv.take_pending_copies())

    def _uncache_unwritten(self, seq: Sequence, num_written: int) -> None:
        """allocate_slots registers full blocks in the prefix cache before the forward writes them. A victim taken
        back out of this step never writes them: drop those hashes, or a later prefix hit would read garbage."""
        bs, pool = self.kv.block_size, self.kv.pool
        for block in self.kv.req_to_blocks.get(seq.request_id, [])[num_written // bs :]:
            h = block.block_hash
            if h is not None and block.ref_cnt == 1 and pool.cached.get(h) is block:
                del pool.cached[h]
                block.block_hash = None

    def _slots_in_use(self) -> int:
        return sum(_slots(s) for s in self.running)

    def _preempt(self, seq: Sequence) -> None:
        """Drop seq's KV and put it at the front of the queue; it will recompute prompt + output tokens."""
        self.running.remove(seq)
        self.kv.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.PREEMPTED
        seq.group.metrics.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    # ---- leaving --------------------------------------------------------------------------------------------------
    def finish(self, seq: Sequence, reason: str) -> None:
        """A sequence is done (stop / length / abort): its blocks go back to the pool now."""
        if seq.finished:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.kv.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = seq.finish_reason or reason
        if seq.group.finished:
            self.groups.pop(seq.group.request_id, None)

    def abort(self, request_id: str) -> RequestGroup | None:
        """Abort every sequence of a request, freeing their blocks immediately. None if unknown or done."""
        group = self.groups.get(request_id)
        if group is None:
            return None
        group.forked = True  # no children will be created any more
        for seq in group.seqs:
            self.finish(seq, "abort")
        self.groups.pop(request_id, None)
        return group
