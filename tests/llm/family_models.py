"""Tiny random checkpoints of every supported family, written by transformers itself (nothing is committed): the
shapes keep each family's distinguishing features (head_dim != hidden / heads, GQA, the shared expert, dense
layers among MoE ones, QKV bias, q/k norms, clip_qkv, llama3 rope scaling, tied embeddings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

COMMON: dict[str, Any] = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)

# model_type -> transformers config kwargs on top of COMMON
FAMILIES: dict[str, dict[str, Any]] = {
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2, head_dim=16),
    "qwen2_moe": dict(  # a shared expert, a dense layer (mlp_only_layers), no renormalisation, QKV bias
        num_hidden_layers=3,
        num_experts=6,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        mlp_only_layers=[1],
        norm_topk_prob=False,
    ),
    "qwen3_moe": dict(  # 16 experts top-8, q/k norm per head, head_dim 32 != 64 / 4
        num_experts=16, num_experts_per_tok=8, moe_intermediate_size=24, head_dim=32, norm_topk_prob=True
    ),
    "olmoe": dict(num_experts=8, num_experts_per_tok=4, clip_qkv=0.6, norm_topk_prob=False, num_key_value_heads=4),
    "llama": dict(
        tie_word_embeddings=True,  # as Llama-3.2-1B
        attention_bias=True,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,  # short, so the scaling changes the test positions' angles
        },
    ),
    "mistral": dict(num_key_value_heads=1),
    "qwen2": dict(tie_word_embeddings=True),
    "qwen3": dict(head_dim=32, num_key_value_heads=1),
}


def hf_model(model_type: str, seed: int = 0, **overrides: Any):
    """A random transformers model of the family (fp32, eager attention) with weights scaled to O(1) logits: with the
    default 0.02 init every model looks alike, and routing, norms and clipping would hardly matter."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    kwargs = {**COMMON, **FAMILIES[model_type], **overrides}
    cfg = AutoConfig.for_model(model_type, **kwargs)
    cfg._attn_implementation = "eager"
    hf = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p.shape[-1] ** -0.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.3)
            else:  # norm weights
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return hf


def write_checkpoint(directory: Path, model_type: str, seed: int = 0, shard: bool = True, **overrides: Any):
    """save_pretrained of a random family model into directory (sharded, with an index, unless shard=False)."""
    hf = hf_model(model_type, seed, **overrides)
    hf.save_pretrained(directory, max_shard_size="40KB" if shard else "10GB")
    return hf
