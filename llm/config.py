"""Model configuration: one dataclass, named presets, Hugging Face `config.json` (model_type "mixtral") in and out.

A Mixtral config with one expert and top-1 routing is the dense (Llama/Mistral-like) baseline: the router then
always picks expert 0 with weight 1.0, so the block is a plain SwiGLU MLP.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any

from common.fs import atomic_write


@dataclass
class ModelConfig:
    vocab_size: int = 4096  # tokenizer size; embedding rows and logits width
    hidden_size: int = 256  # residual stream width (d_model)
    num_layers: int = 4  # decoder blocks
    num_heads: int = 4  # query heads
    num_kv_heads: int = 2  # key/value heads (GQA: num_heads % num_kv_heads == 0; 1 = MQA, num_heads = MHA)
    head_dim: int = 64  # per-head width; need not equal hidden_size // num_heads
    intermediate_size: int = 256  # SwiGLU hidden width of ONE expert
    num_experts: int = 4  # experts per MoE layer (1 = dense baseline)
    num_experts_per_tok: int = 2  # top-k routed experts per token (<= num_experts)
    rope_theta: float = 10000.0  # RoPE base; larger = slower rotation, longer context
    rms_norm_eps: float = 1e-5  # RMSNorm epsilon, inside the rsqrt
    max_position_embeddings: int = 2048  # longest sequence (prompt + generation) the model is meant for
    tie_word_embeddings: bool = True  # lm_head shares the embedding matrix (saves vocab*hidden params)
    initializer_range: float = 0.02  # std of the normal init (residual projections get / sqrt(2 * num_layers))
    bos_token_id: int | None = None  # stored in config.json for the engine; the model itself never reads them
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        if not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"num_experts_per_tok={self.num_experts_per_tok} must be in [1, num_experts={self.num_experts}]"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")

    # ---- sizes -------------------------------------------------------------------------------------------------
    def num_params(self, active: bool = False) -> int:
        """Parameter count (tied embeddings counted once); active=True counts only the top-k experts per token."""
        h, d = self.hidden_size, self.head_dim
        attn = h * self.num_heads * d * 2 + h * self.num_kv_heads * d * 2  # q, o + k, v
        experts = self.num_experts_per_tok if active else self.num_experts
        moe = h * self.num_experts + experts * 3 * h * self.intermediate_size  # router + w1, w2, w3
        layer = attn + moe + 2 * h  # two RMSNorm weights
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return emb + self.num_layers * layer + h

    # ---- Hugging Face config.json ------------------------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        return {
            "architectures": ["MixtralForCausalLM"],
            "model_type": "mixtral",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "num_local_experts": self.num_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            # transformers 5 reads rope_parameters; 4.x reads rope_theta; both are written so either loads it.
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "sliding_window": None,
            "attention_dropout": 0.0,
            "router_jitter_noise": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        }

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        model_type = d.get("model_type")
        if model_type != "mixtral":
            raise ValueError(f"config.json has model_type={model_type!r}; only 'mixtral' checkpoints are supported")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={d['hidden_act']!r} is not supported (SwiGLU experts need 'silu')")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"rope_type={rope_type!r} is not supported; only plain RoPE ('default')")
        theta = rope.get("rope_theta", d.get("rope_theta", 1e6))
        window, max_pos = d.get("sliding_window"), d.get("max_position_embeddings", 4096 * 32)
        if window is not None and window < max_pos:
            warnings.warn(
                f"sliding_window={window} is ignored: attention is full, exact for sequences up to {window} tokens",
                stacklevel=2,
            )
        eos = d.get("eos_token_id")
        if isinstance(eos, list):  # some configs list several stop ids; the first is the canonical one
            eos = eos[0] if eos else None
        heads = d.get("num_attention_heads", 32)
        return cls(
            vocab_size=d.get("vocab_size", 32000),
            hidden_size=d.get("hidden_size", 4096),
            num_layers=d.get("num_hidden_layers", 32),
            num_heads=heads,
            num_kv_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d.get("hidden_size", 4096) // heads,
            intermediate_size=d.get("intermediate_size", 14336),
            num_experts=d.get("num_local_experts", 8),
            num_experts_per_tok=d.get("num_experts_per_tok", 2),
            rope_theta=float(theta),
            rms_norm_eps=d.get("rms_norm_eps", 1e-5),
            max_position_embeddings=max_pos,
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            initializer_range=d.get("initializer_range", 0.02),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=eos,
            pad_token_id=d.get("pad_token_id"),
        )

    def save(self, directory: str | os.PathLike, dtype: str | None = None) -> None:
        """Write `config.json` into directory (created if missing), atomically. dtype: the weights' dtype name
        ("bfloat16"), recorded as transformers does (checkpoint.save_model passes it)."""
        os.makedirs(directory, exist_ok=True)
        hf = self.to_hf_dict()
        if dtype is not None:
            hf["torch_dtype"] = hf["dtype"] = dtype  # transformers 4.x reads torch_dtype, 5.x dtype
        with atomic_write(os.path.join(directory, "config.json"), "w") as f:
            json.dump(hf, f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelConfig:
        """Read a `config.json` file, or the one inside a checkpoint directory."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.exists(path):
            raise ValueError(f"no config.json at {path!r}; expected a Hugging Face-style checkpoint directory")
        with open(path) as f:
            return cls.from_hf_dict(json.load(f))

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


# Named presets. Param counts (tied embeddings): tiny ~0.1M, small ~5.0M (~20 MB fp32), small-dense ~5.0M.
PRESETS: dict[str, ModelConfig] = {
    # for tests: every code path (GQA 4:2, 4 experts top-2, 2 layers) at negligible cost
    "tiny": ModelConfig(
        vocab_size=256, hidden_size=64, num_layers=2, head_dim=16, intermediate_size=64, max_position_embeddings=512
    ),
    # default demo model: trains on a CPU in minutes; 4 experts top-2 (~2.4M active params per token)
    "small": ModelConfig(),  # the field defaults above
}
# dense baseline with the same parameter count as "small": one expert, top-1, four times the expert width
PRESETS["small-dense"] = dataclasses.replace(
    PRESETS["small"], intermediate_size=1024, num_experts=1, num_experts_per_tok=1
)


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """A copy of a named preset, with field overrides (e.g. vocab_size to match a trained tokenizer)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
