"""--init-from: an exported model's shapes are kept, and a directory that is not a model is refused before any work."""

from __future__ import annotations

import pytest

from llm.train import parse_config, train
from tests.llm.train.conftest import FT


def test_init_from_refuses_shape_changes(corpus, full_run, tmp_path):
    args = ["--data", str(corpus), "--out", str(tmp_path / "o"), "--init-from", str(full_run), *FT]
    with pytest.raises(ValueError, match=r"--preset 'small' does not match .*hidden_size: preset 256 != model 64"):
        train(parse_config([*args, "--preset", "small"]))
    with pytest.raises(ValueError, match=r"--model hidden_size=32 \(model: 64\) would change the shapes"):
        train(parse_config([*args, "--model", "hidden_size=32"]))
    with pytest.raises(ValueError, match="vocab_size trains a new tokenizer"):
        parse_config([*args, "--vocab-size", "300"])
    with pytest.raises(ValueError, match="is not a directory"):
        train(parse_config([*args, "--init-from", str(tmp_path / "missing")]))
    assert not (tmp_path / "o").exists()  # all refused before any work


def test_init_from_without_a_tokenizer_is_refused(full_run, corpus, tmp_path):
    import shutil

    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(full_run / name, model / name)
    with pytest.raises(ValueError, match="has no tokenizer.json"):
        train(parse_config(["--data", str(corpus), "--out", str(tmp_path / "o"), "--init-from", str(model), *FT]))
    assert not (tmp_path / "o").exists()
