"""The checkpoint families served here, as configuration: how each one's config.json reads into ModelConfig fields
and writes back, and how its checkpoint names a layer's feed-forward tensors. One model definition (model.py)
serves them all; a family never has code of its own.

    family      architectures[0]        feed-forward                                   attention
    mixtral     MixtralForCausalLM      MoE, top-k renormalised                         GQA
    qwen2_moe   Qwen2MoeForCausalLM     MoE + a shared expert gated by sigmoid;         bias on Q/K/V
                                        dense layers by decoder_sparse_step /
                                        mlp_only_layers; norm_topk_prob
    qwen3_moe   Qwen3MoeForCausalLM     MoE (128 experts top-8), norm_topk_prob         RMSNorm on q, k per head; head_dim
    olmoe       OlmoeForCausalLM        MoE (64 experts top-8), no renormalisation      RMSNorm on q, k over the whole
                                                                                        projection; clip_qkv
    llama       LlamaForCausalLM        dense SwiGLU                                    rope_scaling "llama3"
    mistral     MistralForCausalLM      dense SwiGLU                                    sliding_window
    qwen2       Qwen2ForCausalLM        dense SwiGLU                                    bias on Q/K/V
    qwen3       Qwen3ForCausalLM        dense SwiGLU                                    RMSNorm on q, k per head

Checkpoint names: every family stores attention, norms and embeddings under the same names; a layer's feed-forward
is `mlp.{gate,up,down}_proj` (dense), `mlp.gate` + `mlp.experts.E.{gate,up,down}_proj` (+ `mlp.shared_expert.*`,
`mlp.shared_expert_gate`) for Qwen-MoE and OLMoE, and Mixtral's own `block_sparse_moe.gate` +
`block_sparse_moe.experts.E.{w1,w3,w2}`. checkpoint.py maps them onto the module names of model.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.errors import InvalidArgumentError

ROPE_TYPES = ("default", "linear", "llama3")  # rope_scaling types the rotary embedding implements
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass(frozen=True)
class Family:
    model_type: str
    architecture: str
    moe: (
        str | None
    )  # how config.json sizes the MoE: "mixtral", "qwen" (moe_intermediate_size, ...), "olmoe"; None = dense
    bias: str  # "none"; "qkv": always on Q/K/V (Qwen2); "qkv_bias": the qkv_bias key (Qwen2-MoE, default true);
    # "attention_bias": the attention_bias key, on Q/K/V and O (Llama, Qwen3, OLMoE)
    qk_norm: str | None = None  # "head" (Qwen3) or "proj" (OLMoE)
    window: str | None = None  # "always": sliding_window applies (Mistral, Mixtral); "flag": use_sliding_window (Qwen)
    rope_theta: float = 10000.0  # transformers' default when config.json names none

    @property
    def expert_names(self) -> tuple[str, str, str]:
        """Checkpoint names of one expert's gate, up and down projections (model.py stacks them as w1, w3, w2)."""
        return ("w1", "w3", "w2") if self.moe == "mixtral" else ("gate_proj", "up_proj", "down_proj")

    @property
    def moe_module(self) -> str:
        """Checkpoint name of a layer's MoE block."""
        return "block_sparse_moe" if self.moe == "mixtral" else "mlp"


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("mixtral", "MixtralForCausalLM", moe="mixtral", bias="none", window="always", rope_theta=1e6),
        Family("qwen2_moe", "Qwen2MoeForCausalLM", moe="qwen", bias="qkv_bias", window="flag"),
        Family("qwen3_moe", "Qwen3MoeForCausalLM", moe="qwen", bias="attention_bias", qk_norm="head", window="flag"),
        Family("olmoe", "OlmoeForCausalLM", moe="olmoe", bias="attention_bias", qk_norm="proj"),
        Family("llama", "LlamaForCausalLM", moe=None, bias="attention_bias"),
        Family("mistral", "MistralForCausalLM", moe=None, bias="none", window="always"),
        Family("qwen2", "Qwen2ForCausalLM", moe=None, bias="qkv", window="flag"),
        Family("qwen3", "Qwen3ForCausalLM", moe=None, bias="attention_bias", qk_norm="head", window="flag"),
    )
}
_BY_ARCHITECTURE = {f.architecture: f for f in FAMILIES.values()}


def family(model_type: str | None, architectures: list[str] | None = None) -> Family:
    """The family of a config.json (its model_type, else its first architecture); InvalidArgumentError listing the
    supported families for any other."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    if model_type is None and architectures and architectures[0] in _BY_ARCHITECTURE:
        return _BY_ARCHITECTURE[architectures[0]]
    named = f"model_type={model_type!r}" if model_type is not None else f"architectures={architectures!r}"
    raise InvalidArgumentError(
        f"config.json has {named}; pqrag serves these families: {', '.join(sorted(FAMILIES))} "
        f"({', '.join(sorted(_BY_ARCHITECTURE))})"
    )


# ---- config.json -> ModelConfig fields ---------------------------------------------------------------------------
def read_config(d: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig keyword arguments from a Hugging Face config.json dict (transformers 4.x or 5.x layout)."""
    fam = family(d.get("model_type"), d.get("architectures"))
    if d.get("hidden_act", "silu") != "silu":
        raise InvalidArgumentError(f"hidden_act={d['hidden_act']!r} is not supported (SwiGLU needs 'silu')")
    if d.get("mlp_bias"):
        raise InvalidArgumentError("mlp_bias=true is not supported: the MLP projections here have no bias")
    hidden, heads = d.get("hidden_size", 4096), d.get("num_attention_heads", 32)
    out: dict[str, Any] = {
        "model_type": fam.model_type,
        "vocab_size": d.get("vocab_size", 32000),
        "hidden_size": hidden,
        "num_layers": d.get("num_hidden_layers", 32),
        "num_heads": heads,
        "num_kv_heads": d.get("num_key_value_heads") or heads,
        "head_dim": d.get("head_dim") or hidden // heads,
        "rms_norm_eps": d.get("rms_norm_eps", 1e-5 if fam.model_type in ("mixtral", "olmoe") else 1e-6),
        "max_position_embeddings": d.get("max_position_embeddings", 4096 * 32),
        "tie_word_embeddings": d.get("tie_word_embeddings", False),
        "initializer_range": d.get("initializer_range", 0.02),
        "bos_token_id": d.get("bos_token_id"),
        "eos_token_id": d.get("eos_token_id"),
        "pad_token_id": d.get("pad_token_id"),
        "dtype": d.get("dtype") or d.get("torch_dtype"),
        **_read_rope(d, fam),
        **_read_ffn(d, fam),
        **_read_attention(d, fam),
    }
    out["sliding_window"] = _read_window(d, fam, out["num_layers"])
    return out


def _read_rope(d: dict[str, Any], fam: Family) -> dict[str, Any]:
    # transformers 5 writes rope_parameters (theta included); 4.x rope_theta + rope_scaling.
    rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise InvalidArgumentError(
            f"rope_type={rope_type!r} is not supported; pqrag implements {', '.join(ROPE_TYPES)}"
        )
    theta = float(rope.get("rope_theta", d.get("rope_theta", fam.rope_theta)))
    if rope_type == "default":
        return {"rope_theta": theta, "rope_scaling": None}
    keys = ("factor",) if rope_type == "linear" else LLAMA3_ROPE_KEYS
    missing = [k for k in keys if k not in rope]
    if missing:
        raise InvalidArgumentError(f"rope_type={rope_type!r} needs {', '.join(missing)} in its rope parameters")
    return {"rope_theta": theta, "rope_scaling": {"rope_type": rope_type, **{k: rope[k] for k in keys}}}


def _read_ffn(d: dict[str, Any], fam: Family) -> dict[str, Any]:
    width = d.get("intermediate_size", 14336)
    if fam.moe is None:
        return {"intermediate_size": width, "num_experts": 0, "num_experts_per_tok": 0}
    experts = d.get("num_local_experts") or d.get("num_experts") or 8
    out: dict[str, Any] = {
        "intermediate_size": width,
        "num_experts": experts,
        "num_experts_per_tok": d.get("num_experts_per_tok", 2),
        "norm_topk_prob": True if fam.moe == "mixtral" else bool(d.get("norm_topk_prob", False)),
    }
    if fam.moe == "qwen":  # experts of moe_intermediate_size; intermediate_size is the dense layers' width
        out.update(
            intermediate_size=d.get("moe_intermediate_size", 1408),
            dense_intermediate_size=width,
            shared_expert_intermediate_size=d.get("shared_expert_intermediate_size") or 0,
            decoder_sparse_step=d.get("decoder_sparse_step") or 1,
            mlp_only_layers=tuple(d.get("mlp_only_layers") or ()),
        )
    return out


def _read_attention(d: dict[str, Any], fam: Family) -> dict[str, Any]:
    qkv = {"none": False, "qkv": True}.get(fam.bias)
    if fam.bias == "qkv_bias":
        qkv = bool(d.get("qkv_bias", True))
    out = {"qkv_bias": qkv, "o_bias": False, "qk_norm": fam.qk_norm, "clip_qkv": d.get("clip_qkv")}
    if fam.bias == "attention_bias":
        out["qkv_bias"] = out["o_bias"] = bool(d.get("attention_bias", False))
    return out


def _read_window(d: dict[str, Any], fam: Family, num_layers: int) -> int | None:
    """The sliding window some layer uses, or None: full attention everywhere."""
    window = d.get("sliding_window") or None  # Qwen2-MoE writes 0 when it is off
    if fam.window is None or window is None:
        return None
    if fam.window == "flag":
        if not d.get("use_sliding_window", False):
            return None
        types = d.get("layer_types")
        if types is not None:
            return window if "sliding_attention" in types else None
        if fam.model_type in ("qwen2", "qwen3") and d.get("max_window_layers", 28) >= num_layers:
            return None  # layers from max_window_layers on slide; there are none
    return window


# ---- ModelConfig -> config.json ----------------------------------------------------------------------------------
def write_config(cfg: Any) -> dict[str, Any]:
    """The config.json dict transformers reads as cfg's family (cfg: a ModelConfig; config.py imports this module)."""
    fam = FAMILIES[cfg.model_type]
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling:
        rope = {**cfg.rope_scaling, "rope_theta": cfg.rope_theta}
    d: dict[str, Any] = {
        "architectures": [fam.architecture],
        "model_type": fam.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        # transformers 5 reads rope_parameters; 4.x reads rope_theta (+ rope_scaling); both are written.
        "rope_theta": cfg.rope_theta,
        "rope_parameters": rope,
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "initializer_range": cfg.initializer_range,
        "attention_dropout": 0.0,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
    }
    if cfg.rope_scaling:
        d["rope_scaling"] = dict(cfg.rope_scaling)
    if fam.moe == "mixtral":
        d.update(num_local_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok)
        d.update(router_jitter_noise=0.0)
    elif fam.moe is not None:
        d.update(num_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok)
        d.update(norm_topk_prob=cfg.norm_topk_prob)
    if fam.moe == "qwen":
        d.update(
            intermediate_size=cfg.dense_intermediate_size or cfg.intermediate_size,
            moe_intermediate_size=cfg.intermediate_size,
            shared_expert_intermediate_size=cfg.shared_expert_intermediate_size,
            decoder_sparse_step=cfg.decoder_sparse_step,
            mlp_only_layers=list(cfg.mlp_only_layers),
        )
    if fam.bias == "qkv_bias":
        d["qkv_bias"] = cfg.qkv_bias
    elif fam.bias == "attention_bias":
        d["attention_bias"] = cfg.qkv_bias
    if fam.model_type == "olmoe":
        d["clip_qkv"] = cfg.clip_qkv
    if fam.window == "always":
        d["sliding_window"] = cfg.sliding_window
    elif fam.window == "flag":
        on = cfg.sliding_window is not None
        d.update(
            use_sliding_window=on, sliding_window=cfg.sliding_window, max_window_layers=0 if on else cfg.num_layers
        )
    return d
