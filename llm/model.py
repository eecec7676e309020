"""The decoder-only transformer of every family served (llm/families.py): RMSNorm, RoPE, GQA attention, and per
layer either the sparse MoE feed-forward or a dense SwiGLU MLP. One definition; the families differ in
configuration only (ModelConfig).

Module names follow Hugging Face's (`model.layers.N.self_attn.q_proj`, `...self_attn.q_norm`, `...mlp.gate_proj`,
`model.norm`, `lm_head`), with a layer's MoE block under Mixtral's name `block_sparse_moe` (router `gate`, stacked
(E, I, H) experts `w1`/`w3`/`w2`, Qwen2-MoE's `shared_expert` + `shared_expert_gate`): checkpoint.py maps each
family's tensor names onto these.

Two forwards:
- `forward(input_ids (B, T))` -> logits (B, T, V): training and scoring, full causal attention;
- `forward_paged(input_ids (N,), meta, kv_caches)` -> logits: the engine's step over a flattened batch of prefill
  chunks and decode tokens with a paged KV cache (see attention.AttentionMetadata); its experts run through
  `kernels.fused_moe` (inference only, no autograd needed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llm.attention import Attention, AttentionMetadata
from llm.config import ModelConfig
from llm.mlp import MLP
from llm.moe import SparseMoeBlock, init_std
from llm.norm import RMSNorm

__all__ = ["CausalLM", "DecoderLayer", "RMSNorm", "cross_entropy_loss", "cross_entropy_sum"]

KVCaches = Sequence[tuple[torch.Tensor, torch.Tensor]]  # per layer: k_cache, v_cache (num_blocks, block_size, Hkv, D)


class DecoderLayer(nn.Module):
    """Pre-norm block: h + attn(norm(h)), then h + ffn(norm(h)), ffn the MoE block or a dense MLP (config.is_moe_layer)."""

    def __init__(self, config: ModelConfig, index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.is_moe = config.is_moe_layer(index)
        if self.is_moe:
            self.block_sparse_moe = SparseMoeBlock(config)
        else:
            self.mlp = MLP(config.hidden_size, config.mlp_size)

    def _ffn(self, h: torch.Tensor, fused: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.post_attention_layernorm(h)
        if not self.is_moe:
            return h + self.mlp(x), None
        y, router_logits = self.block_sparse_moe(x.reshape(-1, x.shape[-1]), fused=fused)
        return h + y.view_as(h), router_logits

    def forward(self, h: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """h (B, T, hidden) -> (h, router_logits (B*T, E), None for a dense layer)."""
        h = h + self.self_attn(self.input_layernorm(h), positions)
        return self._ffn(h)

    def forward_paged(
        self, h: torch.Tensor, meta: AttentionMetadata, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> torch.Tensor:
        """h (N, hidden) -> (N, hidden)."""
        h = h + self.self_attn.forward_paged(self.input_layernorm(h), meta, k_cache, v_cache)
        return self._ffn(h, fused=True)[0]


class DecoderBackbone(nn.Module):
    """Embeddings, decoder layers, final norm (Hugging Face's `model.` prefix)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        # An explicit weight skips nn.Embedding's own init (CausalLM.reset_parameters does it): on the meta device
        # that init would go through torch's Python decompositions, whose first import costs seconds.
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size, _weight=torch.empty(config.vocab_size, config.hidden_size)
        )
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class CausalLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = DecoderBackbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if not any(p.is_meta for p in self.parameters()):  # meta construction (checkpoint loading) skips init
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2/nanoGPT init: N(0, 0.02), residual output projections N(0, 0.02 / sqrt(2 L)), norms 1."""
        std, out_std = init_std(self.config)
        nn.init.normal_(self.model.embed_tokens.weight, std=std)
        if not self.config.tie_word_embeddings:
            nn.init.normal_(self.lm_head.weight, std=std)
        for layer in self.model.layers:
            a = layer.self_attn
            for lin in (a.q_proj, a.k_proj, a.v_proj):
                nn.init.normal_(lin.weight, std=std)
            nn.init.normal_(a.o_proj.weight, std=out_std)
            for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj):
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
            (layer.block_sparse_moe if layer.is_moe else layer.mlp).reset_parameters(std, out_std)
        for m in self.modules():
            if isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once

    def forward(
        self, input_ids: torch.Tensor, return_router_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """input_ids (B, T) int64 -> logits (B, T, V) in the model dtype; with return_router_logits also the per-layer
        router logits [(B*T, E)] of each MoE layer for `moe.load_balancing_loss` / `moe.router_z_loss`."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
        T = input_ids.shape[1]
        if T > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {T} > max_position_embeddings={self.config.max_position_embeddings}")
        positions = torch.arange(T, device=input_ids.device)
        h = self.model.embed_tokens(input_ids)
        router_logits = []
        for layer in self.model.layers:
            h, rl = layer(h, positions)
            if rl is not None:
                router_logits.append(rl)
        logits = self.lm_head(self.model.norm(h))
        return (logits, router_logits) if return_router_logits else logits

    def forward_paged(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: KVCaches,
        logits_indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One engine step. input_ids (N,) flattened new tokens of all sequences (prefill chunks first, then
        decodes); kv_caches one (k_cache, v_cache) pair per layer, written in place. Returns logits (M, V) for the
        tokens at logits_indices (M,) (e.g. meta.last_token_indices()), or for all N tokens when None."""
        if input_ids.dim() != 1 or input_ids.shape[0] != meta.positions.shape[0]:
            raise ValueError(f"input_ids must be (N,) with N = len(meta.positions); got {tuple(input_ids.shape)}")
        if len(kv_caches) != len(self.model.layers):
            raise ValueError(f"need one (k_cache, v_cache) per layer: {len(self.model.layers)}, got {len(kv_caches)}")
        h = self.model.embed_tokens(input_ids)
        for layer, (k_cache, v_cache) in zip(self.model.layers, kv_caches):
            h = layer.forward_paged(h, meta, k_cache, v_cache)
        if logits_indices is not None:
            h = h.index_select(0, logits_indices)  # norm + lm_head only where we sample: V is the widest matmul
        return self.lm_head(self.model.norm(h))


def cross_entropy_sum(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed next-token loss, number of counted targets): what a mean over several batches (or ranks) adds up.
    logits (B, T, V), targets (B, T) already shifted by the caller; the loss in fp32."""
    flat = targets.reshape(-1)
    total = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), flat, ignore_index=ignore_index, reduction="sum"
    )
    return total, (flat != ignore_index).sum()


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token loss over the counted targets. A batch whose targets are all ignored (prompt-only chat
    sequences) gives 0, not NaN."""
    total, counted = cross_entropy_sum(logits, targets, ignore_index)
    return total / counted.clamp(min=1)
