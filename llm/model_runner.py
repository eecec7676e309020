"""The model runner: owns the paged KV cache tensors and turns one SchedulerOutput into one forward_paged call.

It flattens the scheduled chunks into one (N,) batch of token ids (prefill chunks first, then decodes, as
attention.build_attention_metadata expects), applies the step's copy-on-write block copies before the forward, and
computes the lm_head only at the last token of each sequence that samples this step.
"""

from __future__ import annotations

import torch

from llm.attention import build_attention_metadata
from llm.kv_cache import KVCacheManager, allocate_kv_caches, copy_blocks
from llm.model import CausalLM
from llm.scheduler import SchedulerOutput


class ModelRunner:
    """Owns the KV cache tensors; turns a SchedulerOutput into one forward_paged call."""

    def __init__(self, model: CausalLM, num_blocks: int, block_size: int):
        cfg = model.config
        p = next(model.parameters())
        self.model = model
        self.device, self.dtype = p.device, p.dtype
        self.block_size = block_size
        self.kv_caches = allocate_kv_caches(
            cfg.num_layers, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim, dtype=p.dtype, device=p.device
        )

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput, kv: KVCacheManager) -> torch.Tensor:
        """Run the scheduled chunks; logits (M, V) fp32 of the last token of each sampling sequence, in order."""
        copy_blocks(self.kv_caches, sched.block_copies)  # copy-on-write first: the forward writes the copies
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
            ids.extend(s.seq.all_token_ids[s.num_computed : s.num_computed + s.num_new])
            if s.samples:
                sample_at.append(len(ids) - 1)
        input_ids = torch.tensor(ids, dtype=torch.int64, device=self.device)  # (N,)
        if not sample_at:  # only partial prefill chunks: nothing to sample, skip the lm_head
            self.model.forward_paged(
                input_ids, meta, self.kv_caches, torch.zeros(0, dtype=torch.int64, device=self.device)
            )
            return torch.empty((0, self.model.config.vocab_size), device=self.device)
        idx = torch.tensor(sample_at, dtype=torch.int64, device=self.device)  # (M,)
        return self.model.forward_paged(input_ids, meta, self.kv_caches, idx).float()  # (M, V)
