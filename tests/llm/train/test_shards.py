"""Token shards: EOS-separated, split per document, reused by key, a tail split for tiny corpora, chat records
through the chat template, aligned to sequence starts, and assistant-only loss masks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from llm.train.corpus import ChatRecord, CorpusError, file_texts
from llm.train.shards import TokenShard, build_shards
from tests.llm.train.conftest import DOCS


def test_shards_are_eos_separated_and_reused(tok, tmp_path):
    texts = lambda: iter(DOCS)  # noqa: E731
    sh = build_shards(texts, tok, tmp_path, min_val_tokens=9, val_fraction=0.2, fingerprint="fp1")
    assert sh.meta["dtype"] == "uint16" and sh.train.tokens.dtype == np.uint16
    assert sh.meta["documents"]["val"] > 0 and sh.meta["documents"]["train"] > 0
    both = np.concatenate([sh.train.tokens, sh.val.tokens])
    assert int((both == tok.eos_id).sum()) == len(DOCS)  # one EOS after every document
    # The first document of the train stream decodes back to a corpus document.
    first = sh.train.tokens[: int(np.argmax(sh.train.tokens == tok.eos_id))]
    assert tok.decode(first.tolist()) in DOCS
    mtime = os.path.getmtime(tmp_path / "train.bin")
    again = build_shards(lambda: iter(["changed"]), tok, tmp_path, 9, 0.2, fingerprint="fp1")
    assert os.path.getmtime(tmp_path / "train.bin") == mtime and len(again.train) == len(sh.train)  # reused
    # The split is per document by content: the same docs in another order land in the same splits.
    other = build_shards(lambda: iter(DOCS[::-1]), tok, tmp_path / "b", 9, 0.2, fingerprint="fp2")
    assert sorted(other.val.tokens.tolist()) == sorted(sh.val.tokens.tolist())
    assert not list(tmp_path.glob("*.tmp"))  # every file renamed into place


def test_small_corpus_falls_back_to_a_tail_split_and_too_small_is_an_error(tok, tmp_path):
    sh = build_shards(lambda: iter(DOCS[:2]), tok, tmp_path, min_val_tokens=17, val_fraction=0.05, fingerprint="a")
    assert len(sh.val) >= 17 and len(sh.train) >= 17
    with pytest.raises(CorpusError, match="too small"):
        build_shards(lambda: iter(["tiny"]), tok, tmp_path / "b", min_val_tokens=64, fingerprint="b")
    with pytest.raises(CorpusError, match="empty"):
        build_shards(lambda: iter([" "]), tok, tmp_path / "c", min_val_tokens=4, fingerprint="c")
    for d in ("b", "c"):  # nothing half-written left behind
        assert not list((tmp_path / d).iterdir())


def test_a_failing_corpus_leaves_no_partial_shards(tok, tmp_path):
    def texts():
        yield from DOCS
        raise CorpusError("bad.jsonl:3: message 0 needs role")

    with pytest.raises(CorpusError, match="bad.jsonl:3"):
        build_shards(texts, tok, tmp_path, min_val_tokens=9, fingerprint="x", batch_docs=4)
    assert not list(tmp_path.iterdir())


def test_token_shard_batches_are_shifted_by_one(tmp_path):
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "s.bin")
    shard = TokenShard(tmp_path / "s.bin", "uint16")
    assert shard.num_sequences(10) == 9  # 99 // 10: each sequence needs one extra target token
    x, y = shard.batch([0, 3], 10)
    assert x.shape == (2, 10) and x.dtype.is_floating_point is False
    assert x[1].tolist() == list(range(30, 40)) and y[1].tolist() == list(range(31, 41))


def test_chat_records_are_tokenized_with_the_chat_template(tok, tmp_path):
    msgs = [
        {"role": "system", "content": "Answer from the passages."},
        {"role": "user", "content": "Context:\n[1] the fox jumps<|end|>\n\nQuestion: what jumps?"},
        {"role": "assistant", "content": "The fox jumps [1]"},
    ]
    f = tmp_path / "sft.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [{"messages": msgs}, {"text": "plain doc"}, {"id": 3}]) + "\n")
    docs = list(file_texts([f]))
    assert docs == [ChatRecord(tuple(msgs)), "plain doc"]  # the record without text is skipped, as in ingestion
    sh = build_shards(lambda: iter(docs), tok, tmp_path / "s", min_val_tokens=4, fingerprint="")
    stream = np.concatenate([sh.train.tokens, sh.val.tokens]).tolist()
    chat = tok.apply_chat_template(msgs, add_generation_prompt=False, tokenize=True)
    plain = tok.encode("plain doc")
    assert stream in ([*chat, tok.eos_id, *plain, tok.eos_id], [*plain, tok.eos_id, *chat, tok.eos_id])
    # one <|end|> per turn: the one typed inside a message stays plain text
    assert chat[0] == tok.bos_id and chat.count(tok.end_id) == 3
    (tmp_path / "bad.jsonl").write_text(json.dumps({"messages": [{"role": "bot", "content": "hi"}]}) + "\n")
    with pytest.raises(CorpusError, match=r"bad.jsonl:1: message 0 needs role"):
        list(file_texts([tmp_path / "bad.jsonl"]))


def test_chat_records_are_aligned_to_sequence_starts_with_ignored_padding(tok, tmp_path):
    chats = [
        ChatRecord(({"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": "fox"}))
        for i in range(12)
    ]
    lengths = {len(tok.apply_chat_template(c.messages, add_generation_prompt=False, tokenize=True)) + 1 for c in chats}
    T = max(lengths) + 3  # every record fits a sequence; plain documents in between shift the offsets
    docs = [d for pair in zip(DOCS, chats) for d in pair]
    sh = build_shards(lambda: iter(docs), tok, tmp_path, min_val_tokens=T + 1, val_fraction=0.2, align=T)
    assert sh.meta["key"]["align"] == T
    for shard in (sh.train, sh.val):
        toks = np.asarray(shard.tokens)
        starts = np.flatnonzero(toks == tok.bos_id)  # each chat record starts with <|bos|>
        ends = [p + int(np.argmax(toks[p:] == tok.eos_id)) for p in starts]  # its EOS
        assert len(starts) and all(p % T + (e - p + 1) <= T + 1 for p, e in zip(starts, ends))  # one sequence
    assert int((np.asarray(sh.train.tokens) == tok.pad_id).sum()) > 0
    x, y = sh.train.batch(np.arange(sh.train.num_sequences(T)), T, ignore_id=tok.pad_id)
    assert (x == tok.pad_id).any() and not (y == tok.pad_id).any() and (y == -100).any()


def test_assistant_only_loss_masks_chat_prompts(tok, tmp_path):
    msgs = [
        {"role": "system", "content": "Answer from the passages."},
        {"role": "user", "content": "[1] the fox jumps\n\nQuestion: what jumps?"},
        {"role": "assistant", "content": "The fox jumps [1]"},
    ]
    ids, gen = tok.apply_chat_template(msgs, add_generation_prompt=False, tokenize=True, return_assistant_mask=True)
    assert ids == tok.apply_chat_template(msgs, add_generation_prompt=False, tokenize=True)
    # the flagged tokens are exactly the answer and the <|end|> that stops it
    flagged = [t for t, g in zip(ids, gen) if g]
    assert flagged[-1] == tok.end_id and tok.decode(flagged[:-1]).strip() == "The fox jumps [1]"
    prompt = tok.apply_chat_template(msgs[:2], add_generation_prompt=True, tokenize=True)
    # everything the server's prompt supplies is context, up to <|assistant|>; the answer's leading newline (its
    # own token here, encoded with the content) is flagged, then all of it but the turn's trailing newline
    assert not any(gen[: len(prompt) - 1]) and all(gen[len(prompt) - 1 : -1]) and gen[-1] == 0

    docs = [ChatRecord(tuple(msgs)), "plain doc", ChatRecord(tuple(msgs[1:]))]
    T = 64
    masked = dict(min_val_tokens=T + 1, val_fraction=0.0, align=T, assistant_only=True, fingerprint="f")
    sh = build_shards(lambda: iter(docs), tok, tmp_path / "a", **masked)
    assert sh.meta["loss_mask"] and sh.meta["key"]["loss"] == "assistant_only"
    toks, flags = np.concatenate([sh.train.tokens, sh.val.tokens]), np.concatenate([sh.train.mask, sh.val.mask])
    assert len(toks) == len(flags)
    # plain text trains on everything, its EOS included; padding and chat prompts on nothing
    plain = tok.encode("plain doc")
    at = next(i for i in range(len(toks)) if toks[i : i + len(plain)].tolist() == plain)
    assert flags[at : at + len(plain) + 1].all()
    assert not flags[toks == tok.pad_id].any() and not flags[toks == tok.bos_id].any()
    assert flags.sum() == 2 * sum(gen) + len(plain) + 1

    def targets(shards):
        ys = [sd.batch(np.arange(sd.num_sequences(T)), T, ignore_id=tok.pad_id)[1] for sd in (shards.train, shards.val)]
        return torch.cat([y.reshape(-1) for y in ys])

    y = targets(sh)
    counted = y[y != -100]
    assert (counted == tok.end_id).sum() >= 1 and not (counted == tok.bos_id).any()

    # reopened from meta.json with the same key (nothing re-tokenized: the source would fail): the masks too
    def unread():
        raise AssertionError("the corpus was read again")

    again = build_shards(unread, tok, tmp_path / "a", **masked)
    np.testing.assert_array_equal(again.train.mask, sh.train.mask)
    # train_on_prompt (assistant_only=False): no masks, every non-PAD target counts
    full = build_shards(lambda: iter(docs), tok, tmp_path / "b", min_val_tokens=T + 1, val_fraction=0.0, align=T)
    assert full.train.mask is None and "loss" not in full.meta["key"]
    assert (targets(full) != -100).sum() > len(counted)


def test_assistant_only_writes_no_mask_for_plain_text(tok, tmp_path):
    sh = build_shards(lambda: iter(DOCS), tok, tmp_path, min_val_tokens=9, align=8, assistant_only=True)
    assert sh.train.mask is None and not sh.meta["loss_mask"] and not list(tmp_path.glob("*.mask.bin*"))
