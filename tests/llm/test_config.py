"""ModelConfig <-> Hugging Face config.json (model_type mixtral), presets, validation."""

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
    assert (cfg.head_dim, cfg.rope_theta, cfg.eos_token_id, cfg.tie_word_embeddings) == (128, 1e6, 2, False)
    assert cfg.num_params() > 46e9  # Mixtral 8x7B: ~46.7B parameters
    with pytest.raises(ValueError, match="model_type"):
        ModelConfig.from_hf_dict({**legacy, "model_type": "llama"})
    with pytest.raises(ValueError, match="rope_type"):
        ModelConfig.from_hf_dict({**legacy, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.warns(UserWarning, match="sliding_window"):
        ModelConfig.from_hf_dict({**legacy, "sliding_window": 4096})


def test_validation():
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        ModelConfig(num_experts=2, num_experts_per_tok=3)
    with pytest.raises(ValueError, match="unknown model preset"):
        get_config("huge")
    with pytest.raises(ValueError, match="config.json"):
        ModelConfig.load("/nonexistent/dir")
