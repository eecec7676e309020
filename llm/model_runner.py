"""The model runner: owns the paged KV cache tensors and turns one SchedulerOutput into one forward_paged call.

It flattens the scheduled chunks into one (N,) batch of token ids (prefill chunks first, then decodes, as
attention.build_attention_metadata expects), applies the step's copy-on-write block copies before the forward, and
computes the lm_head only at the last token of each sequence that samples this step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from llm.attention import build_attention_metadata
from llm.cuda_graphs import DecodeGraphs
from llm.kv_cache import KVCacheManager, allocate_kv_caches, copy_blocks
from llm.model import CausalLM
from llm.scheduler import SchedulerOutput


class ModelRunner:
    """Owns the KV cache tensors; turns a SchedulerOutput into one forward_paged call."""

    def __init__(
        self,
        model: CausalLM,
        num_blocks: int,
        block_size: int,
        cuda_graph_sizes: Sequence[int] = (),
        max_model_len: int | None = None,
    ):
        cfg = model.config
        p = next(model.parameters())
        self.model = model
        self.device, self.dtype = p.device, p.dtype
        self.block_size = block_size
        self.kv_caches = allocate_kv_caches(
            cfg.num_layers, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim, dtype=p.dtype, device=p.device
        )
        # CUDA: pure decode steps replay captured graphs (llm/cuda_graphs.py); elsewhere, or when capture fails,
        # every step runs eagerly.
        self.graphs: DecodeGraphs | None = None
        if cuda_graph_sizes and self.device.type == "cuda":
            assert max_model_len is not None
            graphs = DecodeGraphs(model, self.kv_caches, block_size, max_model_len, cuda_graph_sizes)
            try:
                graphs.capture()
                self.graphs = graphs
            except Exception:  # noqa: BLE001 - an op that cannot be captured must not stop the engine
                logging.getLogger(__name__).warning("CUDA graph capture failed; decoding eagerly", exc_info=True)

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput, kv: KVCacheManager) -> torch.Tensor:
        """Run the scheduled chunks; logits (M, V) fp32 of the last token of each sampling sequence, in order (of
        its last len(draft)+1 tokens when it carries a speculative draft)."""
        copy_blocks(self.kv_caches, sched.block_copies)  # copy-on-write first: the forward writes the copies
        if self.graphs is not None:
            logits = self.graphs.run(sched, kv)
            if logits is not None:
                return logits
        items = sched.scheduled
        meta = build_attention_metadata(
            [s.num_computed for s in items],
            [s.num_new for s in items],
            [kv.get_block_ids(s.seq.request_id) for s in items],
            self.block_size,
            num_prefills=sched.num_prefill_seqs,
            device=self.device,
        )
        ids: list[int] = []
        sample_at: list[int] = []
        for s in items:
            k = len(s.draft)  # speculative tokens after the known ones: logits at each of the last k+1 positions
            ids.extend(s.seq.all_token_ids[s.num_computed : s.num_computed + s.num_new - k])
            ids.extend(s.draft)
            if s.samples:
                sample_at.extend(range(len(ids) - 1 - k, len(ids)))
        input_ids = torch.tensor(ids, dtype=torch.int64, device=self.device)  # (N,)
        if not sample_at:  # only partial prefill chunks: nothing to sample, skip the lm_head
            self.model.forward_paged(
                input_ids, meta, self.kv_caches, torch.zeros(0, dtype=torch.int64, device=self.device)
            )
            return torch.empty((0, self.model.config.vocab_size), device=self.device)
        idx = torch.tensor(sample_at, dtype=torch.int64, device=self.device)  # (M,)
        return self.model.forward_paged(input_ids, meta, self.kv_caches, idx).float()  # (M, V)
