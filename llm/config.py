"""Model configuration: one dataclass for every family served (llm/families.py), named presets, and Hugging Face
`config.json` in and out.

The family differences are fields here (norms, biases, the shared expert, router normalisation, rope scaling,
which layers are MoE), read by one model definition. `num_experts = 0` is a dense model (every layer a SwiGLU
MLP: Llama, Mistral, Qwen2, Qwen3); a Mixtral config with one expert and top-1 routing is pqrag's own dense
baseline (the router then always picks expert 0 with weight 1.0, so the block is a plain SwiGLU MLP).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from common.fs import atomic_write
from llm import families


@dataclass
class ModelConfig:
    vocab_size: int = 4096  # tokenizer size; embedding rows and logits width
    hidden_size: int = 256  # residual stream width (d_model)
    num_layers: int = 4  # decoder blocks
    num_heads: int = 4  # query heads
    num_kv_heads: int = 2  # key/value heads (GQA: num_heads % num_kv_heads == 0; 1 = MQA, num_heads = MHA)
    head_dim: int = 64  # per-head width; need not equal hidden_size // num_heads
    intermediate_size: int = 256  # SwiGLU hidden width of ONE expert (of the MLP in a dense model)
    num_experts: int = 4  # experts per MoE layer (0 = dense model; 1 = pqrag's dense baseline, a one-expert MoE)
    num_experts_per_tok: int = 2  # top-k routed experts per token (<= num_experts; 0 in a dense model)
    rope_theta: float = 10000.0  # RoPE base; larger = slower rotation, longer context
    rms_norm_eps: float = 1e-5  # RMSNorm epsilon, inside the rsqrt
    max_position_embeddings: int = 2048  # longest sequence (prompt + generation) the model is meant for
    tie_word_embeddings: bool = True  # lm_head shares the embedding matrix (saves vocab*hidden params)
    initializer_range: float = 0.02  # std of the normal init (residual projections get / sqrt(2 * num_layers))
    bos_token_id: int | None = None  # stored in config.json for the engine; the model itself never reads them
    eos_token_id: int | list[int] | None = None  # one id or several (stop on any: see eos_token_ids)
    pad_token_id: int | None = None
    # ---- family differences (llm/families.py reads them from config.json; the defaults are Mixtral's) ----
    model_type: str = "mixtral"  # the family: config.json's format and the checkpoint's tensor names
    norm_topk_prob: bool = True  # renormalise the top-k routing weights to sum 1 (False: OLMoE, Qwen1.5-MoE)
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE: a SwiGLU every token goes through, gated by sigmoid; 0 = none
    dense_intermediate_size: int | None = None  # MLP width of the dense layers of a MoE model (None: intermediate_size)
    decoder_sparse_step: int = 1  # layer i is MoE when (i + 1) % decoder_sparse_step == 0 ...
    mlp_only_layers: tuple[int, ...] = ()  # ... and i is not listed here (Qwen-MoE)
    qkv_bias: bool = False  # bias on the Q/K/V projections (Qwen2, Qwen2-MoE; attention_bias elsewhere)
    o_bias: bool = False  # bias on the output projection (attention_bias in Llama, Qwen3, OLMoE)
    qk_norm: str | None = (
        None  # RMSNorm on q and k: "head" over each head's D (Qwen3), "proj" over the projection (OLMoE)
    )
    clip_qkv: float | None = None  # OLMoE: clamp q, k, v to [-clip_qkv, clip_qkv]
    rope_scaling: dict[str, Any] | None = (
        None  # {"rope_type": "linear" | "llama3", ...its parameters}; None = plain RoPE
    )
    sliding_window: int | None = None  # sliding-window attention span of some layer; pqrag attends fully, so it serves
    # sequences up to this many tokens, where both agree (see context_length)
    dtype: str | None = field(default=None, compare=False)  # the checkpoint's weight dtype, as config.json records it

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        if self.num_experts == 0:
            if self.num_experts_per_tok != 0:
                raise ValueError("a dense model (num_experts=0) routes nothing: num_experts_per_tok must be 0")
        elif not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"num_experts_per_tok={self.num_experts_per_tok} must be in [1, num_experts={self.num_experts}]"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.model_type not in families.FAMILIES:
            families.family(self.model_type)  # raises, listing the families
        if self.qk_norm not in (None, "head", "proj"):
            raise ValueError(f"qk_norm must be None, 'head' or 'proj'; got {self.qk_norm!r}")
        if self.decoder_sparse_step < 1:
            raise ValueError(f"decoder_sparse_step={self.decoder_sparse_step} must be >= 1")
        self.mlp_only_layers = tuple(self.mlp_only_layers)

    # ---- layers ------------------------------------------------------------------------------------------------
    def is_moe_layer(self, i: int) -> bool:
        """Whether layer i's feed-forward is the MoE block (else a dense SwiGLU MLP)."""
        return self.num_experts > 0 and (i + 1) % self.decoder_sparse_step == 0 and i not in self.mlp_only_layers

    @property
    def mlp_size(self) -> int:
        """Hidden width of the dense MLP layers."""
        return self.dense_intermediate_size or self.intermediate_size

    @property
    def eos_token_ids(self) -> list[int]:
        """config.json's eos ids as a list (it may hold one or several)."""
        eos = self.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    @property
    def context_length(self) -> int:
        """Longest sequence served: max_position_embeddings, or the sliding window when that is shorter (attention
        here is full, which is exact up to the window)."""
        if self.sliding_window is not None and self.sliding_window < self.max_position_embeddings:
            return self.sliding_window
        return self.max_position_embeddings

    # ---- sizes -------------------------------------------------------------------------------------------------
    def num_params(self, active: bool = False) -> int:
        """Parameter count (tied embeddings counted once); active=True counts only the top-k experts per token."""
        h, d, H, Hkv = self.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads
        attn = h * H * d * 2 + h * Hkv * d * 2  # q, o + k, v
        attn += (H + 2 * Hkv) * d * self.qkv_bias + h * self.o_bias
        attn += {"head": 2 * d, "proj": (H + Hkv) * d}.get(self.qk_norm or "", 0)
        experts = self.num_experts_per_tok if active else self.num_experts
        moe = h * self.num_experts + experts * 3 * h * self.intermediate_size  # router + w1, w2, w3
        if self.shared_expert_intermediate_size:
            moe += 3 * h * self.shared_expert_intermediate_size + h  # the shared expert and its gate
        n_moe = sum(self.is_moe_layer(i) for i in range(self.num_layers))
        ffn = n_moe * moe + (self.num_layers - n_moe) * 3 * h * self.mlp_size
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return emb + self.num_layers * (attn + 2 * h) + ffn + h  # two RMSNorm weights per layer, the final norm

    # ---- Hugging Face config.json ------------------------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        return families.write_config(self)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """From a config.json dict of any family in llm/families.py; InvalidArgumentError (a ValueError) naming the
        supported families, rope types or activations otherwise."""
        return cls(**families.read_config(d))

    def save(self, directory: str | os.PathLike, dtype: str | None = None) -> None:
        """Write `config.json` into directory (created if missing), atomically. dtype: the weights' dtype name
        ("bfloat16"), recorded as transformers does (checkpoint.save_model passes it)."""
        os.makedirs(directory, exist_ok=True)
        hf = self.to_hf_dict()
        dtype = dtype or self.dtype
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
