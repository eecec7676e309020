"""TrainConfig from TOML: unknown keys and wrong types are named; values are checked once."""

from __future__ import annotations

import pytest

from common.errors import InvalidArgumentError
from llm.train.config import TrainConfig, config_from_dict, demo_config, load_toml


def test_toml_unknown_key_is_named(tmp_path):
    f = tmp_path / "train.toml"
    f.write_text('preset = "tiny"\nwarmup_step = 10\n')
    with pytest.raises(ValueError, match=r"unknown key 'warmup_step' \(did you mean 'warmup_steps'\?\)"):
        load_toml(f)
    f.write_text("seq_len = 64\n[model]\nnum_expert = 1\n")
    with pytest.raises(ValueError, match=r"unknown model field 'num_expert' \(did you mean 'num_experts'\?\)"):
        load_toml(f)
    f.write_text('seq_len = "long"\n')
    with pytest.raises(ValueError, match="seq_len must be of type int"):
        load_toml(f)
    f.write_text("seq_len = 64\nlr = 1\n[model]\nnum_layers = 3\n")
    cfg = load_toml(f)
    assert cfg.seq_len == 64 and cfg.lr == 1.0 and cfg.model == {"num_layers": 3}
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        config_from_dict({"batch_size": 0})


def test_missing_or_invalid_toml_file(tmp_path):
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        load_toml(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("seq_len = \n")
    with pytest.raises(InvalidArgumentError, match="invalid TOML"):
        load_toml(tmp_path / "bad.toml")


def test_validate_rejects_bools_and_bad_values():
    with pytest.raises(InvalidArgumentError, match="max_steps must be a positive integer, got True"):
        TrainConfig(max_steps=True).validate()
    with pytest.raises(InvalidArgumentError, match="threads must be a non-negative integer"):
        TrainConfig(threads=-1).validate()
    with pytest.raises(InvalidArgumentError, match=r"val_fraction must be in \(0, 1\)"):
        TrainConfig(val_fraction=1.0).validate()
    with pytest.raises(InvalidArgumentError, match="dtype must be auto, fp32 or bf16"):
        TrainConfig(dtype="fp16").validate()
    TrainConfig(device="cuda:1").validate()  # a valid device string; whether it exists is checked at set-up


def test_demo_config_is_the_documented_command():
    cfg = demo_config("out/x", 10)
    assert cfg.pydoc and cfg.preset == "small" and cfg.out == "out/x" and cfg.max_steps == 10
