"""Decode steps replayed from CUDA graphs (vLLM's cudagraph capture): on a GPU a decode step of a small model is
dominated by launching its ~10 kernels per layer from Python, so the whole forward of a pure decode batch is
captured once per padded batch size and replayed.

    DecodeGraphs(model, kv_caches, block_size, max_model_len, sizes)
      .capture()             per size, largest first: two eager warm-up runs (Triton compiles and autotunes outside
                             the capture), then torch.cuda.graph over forward(size), all graphs in one memory pool
      .run(sched, kv)        a step whose scheduled sequences all decode one token (no prefill chunk, no draft) and
                             number at most max(sizes): its inputs copied into the static buffers, padded to the
                             next captured size, the graph replayed; logits (n, V). None: not a graph step, run eager

Padding rows write nothing (slot -1 is skipped by write_kv) and attend over one key of block 0 (seq_len 1), so
they cannot touch a real sequence. The static block table is max_model_len / block_size wide, so the paged decode
kernel's split-K plan (from the table's width, never from data) is the same at capture and at replay, and nothing in
the captured forward reads the device: the step's only host synchronisation stays the read of its sampled tokens.

`forward(size)` is the same computation without a graph: the CPU tests check it against ModelRunner's eager path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llm.attention import AttentionMetadata
from llm.kv_cache import KVCacheManager, cdiv
from llm.model import CausalLM
from llm.scheduler import SchedulerOutput

DEFAULT_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)  # as vLLM: dense at small batch


class DecodeGraphs:
    def __init__(
        self,
        model: CausalLM,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        block_size: int,
        max_model_len: int,
        sizes: Sequence[int],
    ):
        assert sizes and all(s >= 1 for s in sizes), sizes
        self.model, self.kv_caches, self.block_size = model, kv_caches, block_size
        self.sizes = sorted(set(sizes))
        self.max_model_len = max_model_len
        dev = next(model.parameters()).device
        B, W = self.sizes[-1], cdiv(max_model_len, block_size)
        i32, i64 = dict(dtype=torch.int32, device=dev), dict(dtype=torch.int64, device=dev)
        # Static inputs: a captured graph reads these addresses at every replay.
        self.input_ids = torch.zeros(B, **i64)  # (B,)
        self.positions = torch.zeros(B, **i64)  # (B,)
        self.slot_mapping = torch.full((B,), -1, **i64)  # (B,)
        self.seq_lens = torch.ones(B, **i32)  # (B,)
        self.block_tables = torch.zeros((B, W), **i32)  # (B, W)
        self.query_start_loc = torch.arange(B + 1, **i32)  # (B + 1,) one query per sequence
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # size -> (size, V) logits written by its graph

    def padded_size(self, n: int) -> int | None:
        return next((s for s in self.sizes if s >= n), None)

    def metadata(self, size: int) -> AttentionMetadata:
        """Decode-only metadata over the first `size` rows of the static buffers."""
        return AttentionMetadata(
            positions=self.positions[:size],
            slot_mapping=self.slot_mapping[:size],
            query_start_loc=self.query_start_loc[: size + 1],
            seq_lens=self.seq_lens[:size],
            block_tables=self.block_tables[:size],
            num_prefills=0,
            num_prefill_tokens=0,
            max_query_len=1,
            max_seq_len=self.max_model_len,  # an upper bound: the same for every replay
            prefill_has_context=False,
        )

    @torch.inference_mode()
    def forward(self, size: int) -> torch.Tensor:
        """The decode forward over the static buffers' first `size` rows -> logits (size, V)."""
        meta = self.metadata(size)
        return self.model.forward_paged(self.input_ids[:size], meta, self.kv_caches)

    def load(self, sched: SchedulerOutput, kv: KVCacheManager) -> int | None:
        """Copy a pure decode step into the static buffers, padded; its padded size, or None when it is not one."""
        items = sched.scheduled
        size = self.padded_size(len(items))
        if size is None or sched.num_prefill_seqs or not items or any(s.num_new != 1 or s.draft for s in items):
            return None
        n, bs = len(items), self.block_size
        W = self.block_tables.shape[1]
        ids, pos, slots, lens = [0] * size, [0] * size, [-1] * size, [1] * size
        table = [[0] * W for _ in range(size)]
        for i, s in enumerate(items):
            p = s.num_computed  # the one new token's position
            blocks = kv.get_block_ids(s.seq.request_id)
            ids[i], pos[i], lens[i] = s.seq.all_token_ids[p], p, p + 1
            slots[i] = blocks[p // bs] * bs + p % bs
            table[i][: len(blocks)] = blocks
        assert n <= size
        for buf, values in (
            (self.input_ids, ids),
            (self.positions, pos),
            (self.slot_mapping, slots),
            (self.seq_lens, lens),
            (self.block_tables, table),
        ):
            # one host-to-device copy per buffer; pinned + non_blocking: no wait for the GPU
            src = torch.tensor(values, dtype=buf.dtype)
            if buf.is_cuda:
                src = src.pin_memory()
            buf[:size].copy_(src, non_blocking=True)
        return size

    def capture(self) -> None:
        """Capture one graph per size (largest first, so the shared pool is sized by the first)."""
        assert self.input_ids.is_cuda, "CUDA graphs need the model on a CUDA device"
        pool = None
        for size in reversed(self.sizes):
            for _ in range(2):  # Triton compiles and autotunes outside the capture
                self.forward(size)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = self.forward(size)
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize()

    def run(self, sched: SchedulerOutput, kv: KVCacheManager) -> torch.Tensor | None:
        """Replay the graph of this decode step's padded size -> logits (n, V) fp32; None: not a graph step."""
        size = self.load(sched, kv)
        if size is None or size not in self.graphs:
            return None
        self.graphs[size].replay()
        return self.outputs[size][: len(sched.scheduled)].float()
