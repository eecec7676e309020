"""ModelConfig <-> Hugging Face config.json of every family, presets, validation."""

from __future__ import annotations

import json

import pytest

from llm.config import PRESETS, ModelConfig, get_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_hf_round_trip(name, tmp_path):
    cfg = get_config(name, bos_token_id=1, eos_token_id=0, pad_token_id=2)
    cfg.save(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    assert d["model_type"] == "mixtral" and d["architectures"] == ["MixtralForCausalLM"]
    assert ModelConfig.load(tmp_path) == cfg == ModelConfig.from_hf_dict(cfg.to_hf_dict())


def test_transformers_reads_and_writes_the_same_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = get_config("tiny", rope_theta=5e5, tie_word_embeddings=False)
    cfg.save(tmp_path)
    hc = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(hc).__name__ == "MixtralConfig"
    assert (hc.num_local_experts, hc.num_experts_per_tok, hc.num_key_value_heads, hc.head_dim) == (4, 2, 2, 16)
    assert hc.rope_parameters["rope_theta"] == 5e5 and hc.tie_word_embeddings is False
    assert ModelConfig.from_hf_dict(hc.to_dict()) == cfg  # and back, through transformers' own dict


def test_legacy_and_foreign_configs():
    legacy = {  # transformers 4.x / Mistral's release: rope_theta at top level, no head_dim
        "model_type": "mixtral",
        "vocab_size": 32000,
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "num_hidden_layers": 32,
        "intermediate_size": 14336,
        "rope_theta": 1e6,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "eos_token_id": [2, 7],
        "sliding_window": None,
    }
    cfg = ModelConfig.from_hf_dict(legacy)
    assert (cfg.head_dim, cfg.rope_theta, cfg.tie_word_embeddings) == (128, 1e6, False)
    assert cfg.eos_token_id == [2, 7] and cfg.eos_token_ids == [2, 7]  # stop on any of them
    assert cfg.num_params() > 46e9  # Mixtral 8x7B: ~46.7B parameters
    assert 12e9 < cfg.num_params(active=True) < 13e9  # ~12.9B active
    with pytest.raises(ValueError, match="model_type='gpt2'; pqrag serves these families: llama, mistral, mixtral"):
        ModelConfig.from_hf_dict({**legacy, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="rope_type='yarn' is not supported; pqrag implements default, linear, llama3"):
        ModelConfig.from_hf_dict({**legacy, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    windowed = ModelConfig.from_hf_dict({**legacy, "sliding_window": 4096})
    assert windowed.sliding_window == 4096 and windowed.context_length == 4096  # served up to the window only


def test_family_differences_are_read_from_config_json():
    qwen15 = {  # Qwen1.5-MoE-A2.7B
        "model_type": "qwen2_moe",
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "moe_intermediate_size": 1408,
        "shared_expert_intermediate_size": 5632,
        "num_experts": 60,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "norm_topk_prob": False,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "use_sliding_window": False,
        "sliding_window": 32768,
        "vocab_size": 151936,
        "max_position_embeddings": 8192,
    }
    c = ModelConfig.from_hf_dict(qwen15)
    assert (c.num_experts, c.intermediate_size, c.shared_expert_intermediate_size, c.mlp_size) == (60, 1408, 5632, 5632)
    assert c.qkv_bias and not c.o_bias and not c.norm_topk_prob and c.sliding_window is None
    assert 14.2e9 < c.num_params() < 14.4e9 and 2.6e9 < c.num_params(active=True) < 2.8e9  # 14.3B, "A2.7B"
    sparse = ModelConfig.from_hf_dict({**qwen15, "decoder_sparse_step": 2, "mlp_only_layers": [3]})
    assert [sparse.is_moe_layer(i) for i in range(6)] == [False, True, False, False, False, True]
    qwen3 = ModelConfig.from_hf_dict(
        {
            "model_type": "qwen3_moe",
            "hidden_size": 2048,
            "head_dim": 128,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
            "num_experts": 128,
            "num_experts_per_tok": 8,
            "moe_intermediate_size": 768,
            "norm_topk_prob": True,
            "num_hidden_layers": 48,
            "vocab_size": 151936,
        }
    )
    assert (qwen3.head_dim, qwen3.qk_norm, qwen3.norm_topk_prob, qwen3.num_experts_per_tok) == (128, "head", True, 8)
    assert 30.0e9 < qwen3.num_params() < 30.7e9 and 3.2e9 < qwen3.num_params(active=True) < 3.5e9  # 30B-A3B
    olmoe = ModelConfig.from_hf_dict(
        {"model_type": "olmoe", "clip_qkv": 8.0, "num_experts": 64, "num_experts_per_tok": 8}
    )
    assert (olmoe.qk_norm, olmoe.clip_qkv, olmoe.norm_topk_prob) == ("proj", 8.0, False)
    llama = ModelConfig.from_hf_dict(
        {
            "architectures": ["LlamaForCausalLM"],  # no model_type: read from the architecture
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "eos_token_id": [128001, 128008, 128009],
            "tie_word_embeddings": True,
        }
    )
    assert llama.model_type == "llama" and llama.num_experts == 0 and llama.rope_scaling["factor"] == 8.0
    assert llama.eos_token_ids == [128001, 128008, 128009]
    qwen2 = ModelConfig.from_hf_dict(
        {
            "model_type": "qwen2",
            "use_sliding_window": True,
            "sliding_window": 4096,
            "max_window_layers": 28,
            "num_hidden_layers": 28,
        }
    )
    assert qwen2.qkv_bias and qwen2.sliding_window is None  # no layer from max_window_layers on: none slides
    with pytest.raises(ValueError, match="mlp_bias"):
        ModelConfig.from_hf_dict({"model_type": "llama", "mlp_bias": True})


@pytest.mark.parametrize("model_type", ["qwen2_moe", "qwen3_moe", "olmoe", "llama", "mistral", "qwen2", "qwen3"])
def test_every_family_round_trips_through_transformers(model_type, tmp_path):
    transformers = pytest.importorskip("transformers")
    from tests.llm.family_models import COMMON, FAMILIES

    hc = transformers.AutoConfig.for_model(model_type, **{**COMMON, **FAMILIES[model_type]})
    cfg = ModelConfig.from_hf_dict(hc.to_dict())
    assert cfg.model_type == model_type
    cfg.save(tmp_path)
    again = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(again) is type(hc)
    assert ModelConfig.from_hf_dict(again.to_dict()) == cfg == ModelConfig.load(tmp_path)


def test_validation():
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        ModelConfig(num_experts=2, num_experts_per_tok=3)
    with pytest.raises(ValueError, match="unknown model preset"):
        get_config("huge")
    with pytest.raises(ValueError, match="config.json"):
        ModelConfig.load("/nonexistent/dir")
