"""The command line: options override the TOML file, and bad input is reported through main() without a
traceback (exit status 2), also from `pqrag train`."""

from __future__ import annotations

import json

from llm.train import main, parse_config
from tests.llm.train.conftest import BASE


def test_missing_corpus_path_reports_through_main(tmp_path, capsys):
    rc = main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), *BASE])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_config_file_typo_is_named(tmp_path, capsys):
    f = tmp_path / "t.toml"
    f.write_text("max_step = 10\n")
    assert main(["--config", str(f), "--pydoc", "--out", str(tmp_path / "o")]) == 2
    assert "unknown key 'max_step' (did you mean 'max_steps'?)" in capsys.readouterr().err


def test_bad_values_are_named(tmp_path, capsys):
    assert main(["--pydoc", "--out", str(tmp_path / "o"), "--batch-size", "0"]) == 2
    assert "batch_size must be a positive integer, got 0" in capsys.readouterr().err
    assert main(["--pydoc", "--out", str(tmp_path / "o"), "--device", "gpu"]) == 2
    assert "device must be auto, cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err
    assert main(["--pydoc", "--out", str(tmp_path / "o"), "--model", "num_layers"]) == 2
    assert "--model expects KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_pqrag_train_forwards_to_the_trainer(tmp_path, corpus, capsys):
    from service.cli import main as cli_main

    rc = cli_main(["train", "--data", str(corpus), "--out", str(tmp_path), *BASE, "--seq-len", "4096"])
    assert rc == 2 and "max_position_embeddings" in capsys.readouterr().err


def test_cli_overrides_toml(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text('preset = "tiny"\nseq_len = 64\nlr = 0.01\n[model]\nnum_layers = 3\n')
    cfg = parse_config(["--config", str(f), "--lr", "0.002", "--model", "num_experts=1", "--pydoc"])
    assert cfg.preset == "tiny" and cfg.seq_len == 64 and cfg.lr == 0.002 and cfg.pydoc
    assert cfg.model == {"num_layers": 3, "num_experts": 1}
    assert json.loads(json.dumps(cfg.to_dict()))["preset"] == "tiny"
