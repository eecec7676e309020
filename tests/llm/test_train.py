"""The trainer end to end on a tiny model: resume reproduces an uninterrupted run, 2 DDP processes reproduce 1,
the export loads in transformers with the same logits, and bad input fails fast with a clear message."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llm.config import get_config
from llm.data import CorpusError
from llm.moe import load_balancing_loss
from llm.train import DistInfo, lr_factor, main, param_groups, parse_config, read_metrics, router_losses, train
from llm.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
# tiny model, 32-token sequences, batch 4: a step is a few ms; every path (MoE aux loss, eval, sample) runs.
BASE = [
    "--preset",
    "tiny",
    "--seq-len",
    "32",
    "--batch-size",
    "4",
    "--vocab-size",
    "300",
    "--warmup-steps",
    "2",
    "--eval-interval",
    "4",
    "--eval-batches",
    "2",
    "--sample-tokens",
    "4",
    "--threads",
    "1",
    "--quiet",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """40 documents of real English (Python's language reference topics), as .md files."""
    from pydoc_data.topics import topics

    d = tmp_path_factory.mktemp("corpus")
    for key in sorted(topics)[:40]:
        (d / f"{key}.md").write_text(topics[key][:3000])
    return d


def cfg_of(argv: list[str]) -> TrainConfig:
    return parse_config(argv)


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl")}


@pytest.fixture(scope="module")
def full_run(corpus, tmp_path_factory) -> Path:
    """8 steps, grad accumulation 2, uninterrupted."""
    out = tmp_path_factory.mktemp("full")
    train(cfg_of(["--data", str(corpus), "--out", str(out), "--max-steps", "8", "--grad-accum", "2", *BASE]))
    return out


def test_metrics_plot_and_export_files(full_run):
    rows = read_metrics(full_run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 9))
    for key in ("loss", "ce_loss", "aux_loss", "lr", "tokens_per_s", "expert_share", "grad_norm"):
        assert key in rows[0]
    assert rows[0]["tokens"] == 4 * 2 * 32
    share = np.array(rows[-1]["expert_share"])
    assert share.shape == (2, 4) and np.allclose(share.sum(1), 1.0, atol=1e-3)
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [4, 8] and "sample" in evals[0]
    assert abs(evals[-1]["val_ppl"] - np.exp(evals[-1]["val_loss"])) < 1e-3 * evals[-1]["val_ppl"]
    assert rows[-1]["ce_loss"] < rows[0]["ce_loss"]  # it learns something
    for name in ("config.json", "model.safetensors", "tokenizer.json", "checkpoint.pt", "loss.png"):
        assert (full_run / name).exists(), name
    assert (full_run / "data" / "train.bin").exists() and not (full_run / "checkpoint.pt.tmp").exists()


def test_resume_reproduces_the_uninterrupted_run(corpus, full_run, tmp_path):
    args = ["--data", str(corpus), "--out", str(tmp_path), "--grad-accum", "2", "--lr-decay-steps", "8", *BASE]
    train(cfg_of([*args, "--max-steps", "4"]))  # "interrupted" at step 4, same schedule as the full run
    assert sorted(losses(tmp_path)) == [1, 2, 3, 4]
    train(cfg_of([*args, "--max-steps", "8", "--resume"]))
    a, b = losses(full_run), losses(tmp_path)
    assert sorted(b) == list(range(1, 9))
    for step in a:
        assert abs(a[step] - b[step]) < 1e-6, (step, a[step], b[step])
    va = [r["val_loss"] for r in read_metrics(full_run / "metrics.jsonl") if r["step"] == 8]
    vb = [r["val_loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["step"] == 8]
    assert abs(va[0] - vb[0]) < 1e-6


def test_export_loads_here_and_in_transformers_with_the_same_logits(full_run):
    transformers = pytest.importorskip("transformers")
    from llm.checkpoint import load_model
    from llm.tokenizer import Tokenizer

    ours = load_model(full_run)
    tok = Tokenizer.from_file(full_run)
    assert ours.config.vocab_size == tok.vocab_size and ours.config.eos_token_id == tok.eos_id
    hf = transformers.AutoModelForCausalLM.from_pretrained(full_run, attn_implementation="eager").eval()
    ids = torch.tensor([tok.encode("The for statement is used to iterate")])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ddp_processes_match_one_with_the_same_global_batch(corpus, full_run, tmp_path):
    """torchrun, 2 gloo processes x 2 sequences vs the 1-process run of 4 sequences (same tokenizer, data, seed)."""
    args = [
        "--data",
        str(corpus),
        "--out",
        str(tmp_path),
        "--max-steps",
        "8",
        "--grad-accum",
        "2",
        "--tokenizer",
        str(full_run / "tokenizer.json"),
        *BASE,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "llm.train",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = losses(full_run), losses(tmp_path)
    assert sorted(b) == list(range(1, 9))
    for step in a:
        assert abs(a[step] - b[step]) < 1e-4, (step, a[step], b[step])
    va = [r["val_loss"] for r in read_metrics(full_run / "metrics.jsonl") if "val_loss" in r]
    vb = [r["val_loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if "val_loss" in r]
    assert np.allclose(va, vb, atol=1e-4)


# ---- fine-tuning: --init-from ----

FT = [a for a in BASE if a not in ("--vocab-size", "300")]  # an init model brings its own tokenizer


def test_init_from_starts_at_the_exported_weights_and_resumes(corpus, full_run, tmp_path):
    from llm.checkpoint import load_model
    from llm.data import BatchSampler, TokenShard
    from llm.model import cross_entropy_loss

    args = ["--data", str(corpus), "--out", str(tmp_path), "--init-from", str(full_run), *FT]
    train(cfg_of([*args, "--max-steps", "2"]))
    assert (tmp_path / "tokenizer.json").read_text() == (full_run / "tokenizer.json").read_text()
    # Step 1's loss is computed before its update: it is the exported model's loss on step 1's batch.
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    shard = TokenShard(tmp_path / "data" / "train.bin", meta["dtype"])
    x, y = shard.batch(BatchSampler(shard.num_sequences(32), 4, seed=1337).next_indices(), 32)
    with torch.no_grad():
        ce = cross_entropy_loss(load_model(full_run)(x), y).item()
    first = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert first["step"] == 1 and abs(first["ce_loss"] - ce) < 1e-5, (first["ce_loss"], ce)
    train(cfg_of([*args, "--max-steps", "3", "--resume"]))  # resume reads checkpoint.pt, as without --init-from
    assert sorted(losses(tmp_path)) == [1, 2, 3]


def test_fine_tuning_on_chat_records_trains_on_the_answers_only(full_run, tmp_path):
    from llm.checkpoint import load_model
    from llm.data import BatchSampler, TokenShard
    from llm.model import cross_entropy_loss

    chats = [
        {
            "messages": [
                {"role": "user", "content": f"[1] The {w} statement binds names.\n\nQuestion: {w}?"},
                {"role": "assistant", "content": f"The {w} statement binds names. [1]"},
            ]
        }
        for w in ["global", "nonlocal", "import", "def", "class", "for", "with", "try"] * 3
    ]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in chats))
    out = tmp_path / "out"
    train(cfg_of(["--data", str(data), "--out", str(out), "--init-from", str(full_run), "--max-steps", "1", *FT]))
    meta = json.loads((out / "data" / "meta.json").read_text())
    assert meta["loss_mask"]
    masked = TokenShard(out / "data" / "train.bin", meta["dtype"], out / "data" / "train.mask.bin")
    unmasked = TokenShard(out / "data" / "train.bin", meta["dtype"])
    idx = BatchSampler(masked.num_sequences(32), 4, seed=1337).next_indices()
    model = load_model(full_run)
    with torch.no_grad():
        want, every = (
            cross_entropy_loss(model(x), y).item() for x, y in (masked.batch(idx, 32), unmasked.batch(idx, 32))
        )
    first = read_metrics(out / "metrics.jsonl")[0]
    assert abs(first["ce_loss"] - want) < 1e-5 and abs(want - every) > 1e-3, (first["ce_loss"], want, every)


def test_init_from_refuses_shape_changes(corpus, full_run, tmp_path):
    args = ["--data", str(corpus), "--out", str(tmp_path / "o"), "--init-from", str(full_run), *FT]
    with pytest.raises(ValueError, match=r"--preset 'small' does not match .*hidden_size: preset 256 != model 64"):
        train(cfg_of([*args, "--preset", "small"]))
    with pytest.raises(ValueError, match=r"--model hidden_size=32 \(model: 64\) would change the shapes"):
        train(cfg_of([*args, "--model", "hidden_size=32"]))
    with pytest.raises(ValueError, match="vocab_size trains a new tokenizer"):
        cfg_of([*args, "--vocab-size", "300"])
    with pytest.raises(ValueError, match="is not a directory"):
        train(cfg_of([*args, "--init-from", str(tmp_path / "missing")]))
    assert not (tmp_path / "o").exists()  # all refused before any work


# ---- pieces ----


def test_router_losses_match_moe_load_balancing_loss_on_one_process():
    torch.manual_seed(0)
    logits = [torch.randn(24, 4), torch.randn(24, 4)]
    aux, counts = router_losses(logits, get_config("tiny"), DistInfo())
    torch.testing.assert_close(aux, load_balancing_loss(logits, 4, 2))
    assert counts.shape == (2, 4) and counts.sum().item() == 2 * 24 * 2


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(warmup_steps=4, max_steps=20, min_lr_ratio=0.1)
    f = [lr_factor(s, cfg) for s in range(25)]
    assert f[0] == 0.25 and f[3] == 1.0 and f[4] == 1.0
    assert all(a >= b for a, b in zip(f[4:], f[5:]))
    assert abs(f[20] - 0.1) < 1e-9 and f[24] == f[20]


def test_param_groups_skip_norms_and_embeddings():
    from llm.model import CausalLM

    model = CausalLM(get_config("tiny"))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("norm" in names[id(p)] or "embed" in names[id(p)] for p in no_decay["params"])
    assert any("experts.w1" in names[id(p)] for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# ---- bad input fails before any long work ----


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "empty.txt").write_text("   \n")
    with pytest.raises(CorpusError, match="empty"):
        train(cfg_of(["--data", str(tmp_path / "c"), "--out", str(tmp_path / "o"), *BASE]))


def test_missing_corpus_path_reports_through_main(tmp_path, capsys):
    rc = main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), *BASE])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_seq_len_beyond_max_position_embeddings(tmp_path, corpus):
    with pytest.raises(ValueError, match="seq_len=1024 > max_position_embeddings=512"):
        train(cfg_of(["--data", str(corpus), "--out", str(tmp_path), *BASE, "--seq-len", "1024"]))


def test_resume_into_a_different_config_is_refused(corpus, full_run, tmp_path, capsys):
    import shutil

    for name in ("checkpoint.pt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(full_run / name, tmp_path / name)
    with pytest.raises(ValueError, match=r"model config differs \(num_layers: checkpoint 2 != now 3\)"):
        train(cfg_of(["--data", str(corpus), "--out", str(tmp_path), "--resume", "--model", "num_layers=3", *BASE]))
    with pytest.raises(ValueError, match="seq_len 64 != checkpoint's 32"):
        train(cfg_of(["--data", str(corpus), "--out", str(tmp_path), "--resume", *BASE, "--seq-len", "64"]))
    with pytest.raises(ValueError, match="already holds a training run"):
        train(cfg_of(["--data", str(corpus), "--out", str(tmp_path), *BASE]))
    with pytest.raises(ValueError, match="no checkpoint.pt"):
        train(cfg_of(["--data", str(corpus), "--out", str(tmp_path / "new"), "--resume", *BASE]))


def test_config_file_typo_is_named(tmp_path, capsys):
    f = tmp_path / "t.toml"
    f.write_text("max_step = 10\n")
    assert main(["--config", str(f), "--pydoc", "--out", str(tmp_path / "o")]) == 2
    assert "unknown key 'max_step' (did you mean 'max_steps'?)" in capsys.readouterr().err


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
