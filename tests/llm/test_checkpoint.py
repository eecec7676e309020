"""Checkpoints interoperate with transformers both ways: per-expert and fused expert names, shards, tied heads."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, MixtralConfig, MixtralForCausalLM  # noqa: E402

from llm.checkpoint import load_model, save_model  # noqa: E402
from llm.config import get_config  # noqa: E402
from llm.model import CausalLM  # noqa: E402

ATOL = 1e-4


def random_hf(tie: bool = False, seed: int = 0) -> MixtralForCausalLM:
    torch.manual_seed(seed)
    hc = MixtralConfig(
        vocab_size=80,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=3,
        num_experts_per_tok=2,
        tie_word_embeddings=tie,
        max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
        attn_implementation="eager",
    )
    hf = MixtralForCausalLM(hc).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p.shape[-1] ** -0.5)
    return hf


def random_ours(tie: bool, seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    model = CausalLM(get_config("tiny", tie_word_embeddings=tie, vocab_size=80, bos_token_id=1, eos_token_id=0))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p.shape[-1] ** -0.5)
    return model.eval()


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.mark.parametrize("tie", [False, True])
def test_transformers_save_pretrained_loads_here(tmp_path, tie):
    hf = random_hf(tie)
    hf.save_pretrained(tmp_path)
    model = load_model(tmp_path, dtype=torch.float32)
    assert not model.training
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    ids = torch.randint(0, 80, (2, 9))
    torch.testing.assert_close(logits_of(model, ids), logits_of(hf, ids), atol=ATOL, rtol=0)


@pytest.mark.parametrize("tie", [False, True])
def test_saved_here_loads_in_transformers(tmp_path, tie):
    model = random_ours(tie)
    save_model(model, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in names  # Mistral's per-expert names
    assert "model.layers.0.block_sparse_moe.gate.weight" in names
    assert ("lm_head.weight" in names) != tie
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert hf.config.model_type == "mixtral" and hf.config.num_local_experts == 4
    ids = torch.randint(0, 80, (2, 11))
    torch.testing.assert_close(logits_of(hf, ids), logits_of(model, ids), atol=ATOL, rtol=0)
    # and back: identical weights after a round trip through our loader
    again = load_model(tmp_path, dtype=torch.float32)
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n


def test_sharded_checkpoints_both_ways(tmp_path):
    hf = random_hf(seed=2)
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert os.path.exists(tmp_path / "hf" / "model.safetensors.index.json")
    ids = torch.randint(0, 80, (1, 7))
    model = load_model(tmp_path / "hf", dtype=torch.float32)
    torch.testing.assert_close(logits_of(model, ids), logits_of(hf, ids), atol=ATOL, rtol=0)

    save_model(model, tmp_path / "ours", max_shard_bytes=16_000)
    index = json.loads((tmp_path / "ours" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not os.path.exists(tmp_path / "ours" / "model.safetensors")
    hf2 = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    torch.testing.assert_close(logits_of(hf2, ids), logits_of(hf, ids), atol=ATOL, rtol=0)


def test_fused_transformers5_names_load(tmp_path):
    """A raw state_dict of transformers 5's in-memory model (mlp.experts.gate_up_proj / down_proj, mlp.gate)."""
    hf = random_hf(seed=3)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert "model.layers.0.mlp.experts.gate_up_proj" in state  # the layout this test is about
    save_file(state, str(tmp_path / "model.safetensors"))
    hf.config.save_pretrained(tmp_path)
    ids = torch.randint(0, 80, (2, 5))
    torch.testing.assert_close(
        logits_of(load_model(tmp_path, dtype=torch.float32), ids), logits_of(hf, ids), atol=ATOL, rtol=0
    )


def test_load_dtype_and_errors(tmp_path):
    model = random_ours(tie=False)
    save_model(model, tmp_path / "bf16", dtype=torch.bfloat16)
    cfg = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert cfg["model_type"] == "mixtral" and cfg["dtype"] == "bfloat16"
    loaded = load_model(tmp_path / "bf16", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    ids = torch.randint(0, 80, (1, 6))
    assert torch.isfinite(logits_of(loaded, ids).float()).all()

    with pytest.raises(ValueError, match="not a directory"):
        load_model(tmp_path / "missing")
    save_model(model, tmp_path / "bad")
    cfg = json.loads((tmp_path / "bad" / "config.json").read_text())
    cfg["num_local_experts"] = 5  # config no longer matches the tensors
    (tmp_path / "bad" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="experts"):
        load_model(tmp_path / "bad")


def test_save_is_atomic(tmp_path, monkeypatch):
    """A save that fails half-way leaves the previous checkpoint whole and no temporary file behind."""
    import llm.checkpoint

    model = random_ours(tie=False)
    save_model(model, tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in ("config.json", "model.safetensors")}

    def torn_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(llm.checkpoint, "save_file", torn_write)
    with pytest.raises(OSError, match="disk full"):
        save_model(random_ours(tie=False, seed=1), tmp_path, dtype=torch.bfloat16)
    assert (tmp_path / "model.safetensors").read_bytes() == before["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "mixtral"  # old or new, never torn
    monkeypatch.undo()
    again = load_model(tmp_path, dtype=torch.float32)
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n


def test_dtype_defaults_to_the_checkpoints_own_and_conversions_are_exact(tmp_path):
    """bf16 loads as bf16 (no float32 copy); fp16 on a CPU runs in fp32; a conversion equals the stored values."""
    from common.device import cpu_bf16_flags
    from llm.checkpoint import auto_dtype

    model = random_ours(tie=True)
    save_model(model, tmp_path / "bf16", dtype=torch.bfloat16)
    stored = load_model(tmp_path / "bf16")
    assert {p.dtype for p in stored.parameters()} == {torch.bfloat16}
    assert stored.lm_head.weight is stored.model.embed_tokens.weight  # a mapped tie stays a tie
    upcast = load_model(tmp_path / "bf16", dtype=torch.float32)
    for (name, a), b in zip(stored.state_dict().items(), upcast.state_dict().values()):
        assert b.dtype == torch.float32 and torch.equal(a.float(), b), name
    save_model(model, tmp_path / "fp16", dtype=torch.float16)
    # fp16 on a CPU: float32, or bf16 where the CPU has it (tests/common/test_device.py covers the choice)
    cpu_fast = torch.bfloat16 if cpu_bf16_flags() else torch.float32
    assert next(load_model(tmp_path / "fp16").parameters()).dtype == cpu_fast
    assert next(load_model(tmp_path / "fp16", dtype="float32").parameters()).dtype == torch.float32  # by name
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert auto_dtype(torch.float32, cuda) == torch.bfloat16 and auto_dtype(torch.float16, cuda) == torch.float16
    assert auto_dtype(torch.float32, cpu) == cpu_fast and auto_dtype(torch.bfloat16, cpu) == torch.bfloat16


def test_loaded_weights_are_private_to_the_process(tmp_path):
    """CPU weights used as stored are copy-on-write views of the file: changing them never touches the checkpoint."""
    model = random_ours(tie=False)
    save_model(model, tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    loaded = load_model(tmp_path, dtype=torch.float32)
    with torch.no_grad():
        loaded.lm_head.weight.mul_(2.0)
        loaded.model.norm.weight.zero_()
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert torch.equal(load_model(tmp_path, dtype=torch.float32).lm_head.weight, model.lm_head.weight)
