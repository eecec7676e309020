"""`pqrag models inspect DIR [--json]` on checkpoints transformers wrote: family, experts and top-k, parameters
(total equals transformers' count), dtype, context, tokenizer kind and chat template."""

from __future__ import annotations

import json
import re

import pytest
import torch

from service.cli import main

pytest.importorskip("transformers")


def test_inspect_a_qwen2_moe_checkpoint(tmp_path, capsys):
    from tests.llm import tiny_tokenizers
    from tests.llm.family_models import hf_model

    hf = hf_model("qwen2_moe").to(torch.bfloat16)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    tiny_tokenizers.chatml(tmp_path)
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [2, 0], "do_sample": True, "temperature": 0.7, "top_p": 0.8})
    )
    assert main(["models", "inspect", str(tmp_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["family"], info["layers"], info["moe_layers"], info["experts"], info["top_k"]) == (
        "qwen2_moe",
        3,
        2,
        6,
        2,
    )
    assert info["total_params"] == hf.num_parameters() and info["active_params"] < info["total_params"]
    assert info["dtype"] == "bfloat16" and info["files"] > 1 and info["context_length"] == 256
    assert info["tokenizer"]["kind"] == "byte-level BPE" and info["tokenizer"]["chat_template"] is True
    assert info["tokenizer"]["stop_tokens"] == ["<|endoftext|>", "<|im_end|>"]
    assert info["default_sampling"] == {"temperature": 0.7, "top_p": 0.8}

    assert main(["models", "inspect", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "family" in text and "qwen2_moe" in text and "6 experts top-2 in 2 of 3 layers, shared expert" in text
    assert re.search(r"^chat template +yes$", text, re.M)


def test_inspect_refuses_what_is_not_a_checkpoint(tmp_path, capsys):
    assert main(["models", "inspect", str(tmp_path / "missing")]) == 1
    assert "not a directory" in capsys.readouterr().err
