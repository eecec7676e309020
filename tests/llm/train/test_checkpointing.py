"""checkpoint.pt: a resumed run reproduces the uninterrupted one, and a checkpoint only resumes into the same run."""

from __future__ import annotations

import shutil

import pytest
import torch

from llm.train import parse_config, read_metrics, train
from llm.train.checkpointing import CHECKPOINT, load_checkpoint
from tests.llm.train.conftest import BASE, losses


def test_resume_reproduces_the_uninterrupted_run(corpus, full_run, tmp_path):
    args = ["--data", str(corpus), "--out", str(tmp_path), "--grad-accum", "2", "--lr-decay-steps", "8", *BASE]
    train(parse_config([*args, "--max-steps", "4"]))  # "interrupted" at step 4, same schedule as the full run
    assert sorted(losses(tmp_path)) == [1, 2, 3, 4]
    train(parse_config([*args, "--max-steps", "8", "--resume"]))
    a, b = losses(full_run), losses(tmp_path)
    assert sorted(b) == list(range(1, 9))
    for step in a:
        assert abs(a[step] - b[step]) < 1e-6, (step, a[step], b[step])
    va = [r["val_loss"] for r in read_metrics(full_run / "metrics.jsonl") if r["step"] == 8]
    vb = [r["val_loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["step"] == 8]
    assert abs(va[0] - vb[0]) < 1e-6


def test_resume_into_a_different_config_is_refused(corpus, full_run, tmp_path):
    for name in ("checkpoint.pt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(full_run / name, tmp_path / name)
    with pytest.raises(ValueError, match=r"model config differs \(num_layers: checkpoint 2 != now 3\)"):
        train(
            parse_config(["--data", str(corpus), "--out", str(tmp_path), "--resume", "--model", "num_layers=3", *BASE])
        )
    with pytest.raises(ValueError, match="seq_len 64 != checkpoint's 32"):
        train(parse_config(["--data", str(corpus), "--out", str(tmp_path), "--resume", *BASE, "--seq-len", "64"]))
    with pytest.raises(ValueError, match="already holds a training run"):
        train(parse_config(["--data", str(corpus), "--out", str(tmp_path), *BASE]))
    with pytest.raises(ValueError, match="no checkpoint.pt"):
        train(parse_config(["--data", str(corpus), "--out", str(tmp_path / "new"), "--resume", *BASE]))


def test_checkpoint_holds_the_whole_run_state_and_its_format_is_checked(corpus, full_run, tmp_path):
    ckpt = load_checkpoint(full_run / CHECKPOINT)
    assert ckpt["format"] == 1 and ckpt["step"] == 8 and ckpt["tokens"] == 8 * 4 * 2 * 32
    assert {"model", "optimizer", "scheduler", "sampler", "rng", "model_config", "train_config"} <= set(ckpt)
    assert ckpt["sampler"]["position"] == 8 * 2 * 4  # steps x micro-steps x sequences
    ckpt["format"] = 99
    torch.save(ckpt, tmp_path / CHECKPOINT)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(full_run / name, tmp_path / name)
    with pytest.raises(ValueError, match="checkpoint format 99, this trainer reads 1"):
        train(parse_config(["--data", str(corpus), "--out", str(tmp_path), "--resume", *BASE]))
