"""The trainer end to end on a tiny model: the metrics and export files, fine-tuning from an exported model, and
bad input failing fast with a clear message before any work. (Resume: test_checkpointing.py; 2 DDP processes =
1: test_distributed.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llm.train import parse_config, read_metrics, train
from llm.train.corpus import CorpusError
from llm.train.sampler import BatchSampler
from llm.train.shards import TokenShard
from tests.llm.train.conftest import BASE, FT, losses


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


def test_export_loads_here_and_in_transformers_with_the_same_logits(full_run):
    transformers = pytest.importorskip("transformers")
    from llm.checkpoint import load_model
    from llm.tokenizer import Tokenizer

    ours = load_model(full_run, dtype=torch.float32)
    tok = Tokenizer.from_file(full_run)
    assert ours.config.vocab_size == tok.vocab_size and ours.config.eos_token_id == tok.eos_id
    hf = transformers.AutoModelForCausalLM.from_pretrained(full_run, attn_implementation="eager").eval()
    ids = torch.tensor([tok.encode("The for statement is used to iterate")])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)


# ---- fine-tuning: --init-from ----


def test_init_from_starts_at_the_exported_weights_and_resumes(corpus, full_run, tmp_path):
    from llm.checkpoint import load_model
    from llm.model import cross_entropy_loss

    args = ["--data", str(corpus), "--out", str(tmp_path), "--init-from", str(full_run), *FT]
    train(parse_config([*args, "--max-steps", "2"]))
    assert (tmp_path / "tokenizer.json").read_text() == (full_run / "tokenizer.json").read_text()
    # Step 1's loss is computed before its update: it is the exported model's loss on step 1's batch.
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    shard = TokenShard(tmp_path / "data" / "train.bin", meta["dtype"])
    x, y = shard.batch(BatchSampler(shard.num_sequences(32), 4, seed=1337).next_indices(), 32)
    with torch.no_grad():
        ce = cross_entropy_loss(load_model(full_run, dtype=torch.float32)(x), y).item()
    first = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert first["step"] == 1 and abs(first["ce_loss"] - ce) < 1e-5, (first["ce_loss"], ce)
    train(parse_config([*args, "--max-steps", "3", "--resume"]))  # resume reads checkpoint.pt, as without --init-from
    assert sorted(losses(tmp_path)) == [1, 2, 3]


def test_fine_tuning_on_chat_records_trains_on_the_answers_only(full_run, tmp_path):
    from llm.checkpoint import load_model
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
    train(parse_config(["--data", str(data), "--out", str(out), "--init-from", str(full_run), "--max-steps", "1", *FT]))
    meta = json.loads((out / "data" / "meta.json").read_text())
    assert meta["loss_mask"]
    masked = TokenShard(out / "data" / "train.bin", meta["dtype"], out / "data" / "train.mask.bin")
    unmasked = TokenShard(out / "data" / "train.bin", meta["dtype"])
    idx = BatchSampler(masked.num_sequences(32), 4, seed=1337).next_indices()
    model = load_model(full_run, dtype=torch.float32)
    with torch.no_grad():
        want, every = (
            cross_entropy_loss(model(x), y).item() for x, y in (masked.batch(idx, 32), unmasked.batch(idx, 32))
        )
    first = read_metrics(out / "metrics.jsonl")[0]
    assert abs(first["ce_loss"] - want) < 1e-5 and abs(want - every) > 1e-3, (first["ce_loss"], want, every)


# ---- bad input fails before any long work ----


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "empty.txt").write_text("   \n")
    with pytest.raises(CorpusError, match="empty"):
        train(parse_config(["--data", str(tmp_path / "c"), "--out", str(tmp_path / "o"), *BASE]))


def test_seq_len_beyond_max_position_embeddings(tmp_path, corpus):
    with pytest.raises(ValueError, match="seq_len=1024 > max_position_embeddings=512"):
        train(parse_config(["--data", str(corpus), "--out", str(tmp_path), *BASE, "--seq-len", "1024"]))
    assert not list(tmp_path.iterdir())  # refused before any work


def test_missing_collection_is_refused_before_any_work(tmp_path):
    with pytest.raises(CorpusError, match=r"no pqrag store .*--from-collection 'notes'"):
        train(
            parse_config(
                ["--from-collection", "notes", "--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "o"), *BASE]
            )
        )
    assert not (tmp_path / "o").exists()


def test_from_collection_trains_on_a_collection_while_a_server_holds_the_directory(tmp_path):
    from pydoc_data.topics import topics

    from retrieval import Collections

    data_dir, out = tmp_path / "data", tmp_path / "out"
    texts = [topics[key][:3000] for key in sorted(topics)[:2]]
    with Collections(data_dir, device="cpu") as colls:  # holds the directory's lock, as `pqrag serve` does
        colls.create("notes").ingest([{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
        argv = ["--from-collection", "notes", "--data-dir", str(data_dir), "--out", str(out), "--max-steps", "2"]
        summary = train(parse_config([*argv, *BASE]))
    assert summary["step"] == 2 and sorted(losses(out)) == [1, 2]
    meta = json.loads((out / "data" / "meta.json").read_text())
    n_tokens = sum(meta["tokens"].values())
    assert meta["documents"]["train"] + meta["documents"]["val"] in (1, 2) and n_tokens > 2 * 33
    assert "align" not in meta["key"]  # a collection holds no chat records: the unaligned key, as before
