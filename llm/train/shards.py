"""Token shards on disk: the corpus tokenized once into memory-mapped streams, with an optional loss mask.

    shards = build_shards(spec.texts, tok, "out/data", min_val_tokens=seq_len + 1)  # -> {train,val}.bin + meta.json
    x, y = shards.train.batch(indices, seq_len)                                      # (B, T) inputs and targets

Shards are flat token streams (uint16 when the vocabulary fits, else uint32): every document followed by the EOS
token, so packed sequences span document boundaries and the model learns what EOS means. Sequence i of a shard is
tokens[i*T : i*T + T + 1] (inputs = the first T, targets = the last T): fixed-length, no padding, no token lost.

The train/val split is per document, by a hash of its text, so it does not depend on the order the files are read
in, and a document never has tokens on both sides. Corpora too small for that (a single file) fall back to the
last tokens of the stream.

meta.json records the key the shards were built for (corpus fingerprint, tokenizer, split, alignment, loss); the
next run with the same key reuses them, and a checkpoint stores it so a resume refuses different shards. It is
written last and atomically: a crash while tokenizing leaves no meta.json, and the shards are rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from common.fs import atomic_write, fsync_path, replace_durably
from llm.tokenizer import Tokenizer
from llm.train.corpus import ChatRecord, CorpusError, Doc, TextSource, has_text

SPLITS = ("train", "val")


def tokenizer_hash(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.tok.to_str().encode()).hexdigest()[:16]


def _memmap(path: str | os.PathLike, dtype: str) -> np.ndarray:
    return np.memmap(path, dtype=dtype, mode="r") if os.path.getsize(path) else np.zeros(0, dtype=dtype)


class TokenShard:
    """A read-only memory-mapped token stream. Pages are read on demand: the corpus never has to fit in RAM.

    mask_path: an optional parallel uint8 stream, 0 where a token is context only (a chat prompt, an alignment
    gap): such tokens are never targets of the loss."""

    def __init__(self, path: str | os.PathLike, dtype: str, mask_path: str | os.PathLike | None = None):
        self.path = os.fspath(path)
        self.tokens = _memmap(self.path, dtype)
        self.mask = _memmap(mask_path, "uint8") if mask_path is not None else None
        if self.mask is not None and len(self.mask) != len(self.tokens):
            raise ValueError(f"{mask_path} holds {len(self.mask)} flags for {len(self.tokens)} tokens")

    def __len__(self) -> int:
        return len(self.tokens)

    def num_sequences(self, seq_len: int) -> int:
        """Packed sequences of seq_len inputs (+1 target token, shared with the next sequence's first input)."""
        return max((len(self.tokens) - 1) // seq_len, 0)

    def batch(
        self, indices: Sequence[int] | np.ndarray, seq_len: int, ignore_id: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences at indices -> inputs x (B, T) and targets y (B, T) = x shifted left by one, int64. Targets
        equal to ignore_id (the PAD that fills alignment gaps) or masked out by the loss mask become -100,
        cross_entropy's ignore_index."""

        def rows(stream: np.ndarray) -> np.ndarray:
            if not len(indices):
                return np.zeros((0, seq_len + 1), dtype=np.int64)
            return np.stack(
                [np.asarray(stream[i * seq_len : i * seq_len + seq_len + 1], dtype=np.int64) for i in indices]
            )

        t = torch.from_numpy(rows(self.tokens))
        x, y = t[:, :-1], t[:, 1:]
        if ignore_id is not None:
            y = y.masked_fill(y == ignore_id, -100)
        if self.mask is not None:
            y = y.masked_fill(torch.from_numpy(rows(self.mask))[:, 1:] == 0, -100)
        return x, y


@dataclass
class Shards:
    train: TokenShard
    val: TokenShard
    meta: dict


def open_shards(out: Path, meta: dict) -> Shards:
    def shard(split: str) -> TokenShard:
        mask = out / f"{split}.mask.bin" if meta.get("loss_mask") else None
        return TokenShard(out / f"{split}.bin", meta["dtype"], mask)

    return Shards(shard("train"), shard("val"), meta)


def _split_is_val(doc: Doc, val_fraction: float) -> bool:
    # crc32 of the text: stable across runs, processes and Python's hash randomization.
    text = doc.key() if isinstance(doc, ChatRecord) else doc
    return zlib.crc32(text.encode("utf-8", "replace")) % 10_000 < val_fraction * 10_000


def _encode_docs(tokenizer: Tokenizer, docs: Sequence[Doc]) -> list[tuple[list[int], list[int] | None]]:
    """(token ids, assistant mask or None) of each document: plain texts in one batch (the Rust side runs in
    parallel), chat records through the chat template (<|bos|>, role and <|end|> specials; contents as plain
    text), with 1 on the tokens of assistant turns."""
    texts = [d for d in docs if not isinstance(d, ChatRecord)]
    encoded = iter(tokenizer.encode_batch(texts)) if texts else iter(())
    return [
        tokenizer.apply_chat_template(
            d.messages, add_generation_prompt=False, tokenize=True, return_assistant_mask=True
        )
        if isinstance(d, ChatRecord)
        else (next(encoded), None)
        for d in docs
    ]


class _ShardWriter:
    """Appends tokenized documents to out/{split}.bin.tmp (and {split}.mask.bin.tmp when masking), counting
    documents and tokens per split; `commit` moves the finished files into place."""

    def __init__(self, out: Path, tokenizer: Tokenizer, dtype: str, val_fraction: float, align: int, masks: bool):
        self.out, self.tokenizer, self.dtype = out, tokenizer, dtype
        self.val_fraction, self.align = val_fraction, align
        self.eos = np.array([tokenizer.eos_id], dtype=dtype)
        self.fill = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        self.n_docs = {s: 0 for s in SPLITS}
        self.n_tok = {s: 0 for s in SPLITS}
        self.n_chat = 0
        self.tmp = {s: out / f"{s}.bin.tmp" for s in SPLITS}
        self.tmp_mask = {s: out / f"{s}.mask.bin.tmp" for s in SPLITS}
        self.files: dict[str, IO] = {s: open(p, "wb") for s, p in self.tmp.items()}
        self.masks: dict[str, IO] = {s: open(p, "wb") for s, p in self.tmp_mask.items()} if masks else {}

    def write(self, docs: list[Doc]) -> None:
        align = self.align
        for doc, (ids, gen) in zip(docs, _encode_docs(self.tokenizer, docs)):
            split = "val" if _split_is_val(doc, self.val_fraction) else "train"
            arr = np.asarray(ids, dtype=self.dtype)
            # Sequence i is tokens[i*T : i*T + T + 1]: a record of L tokens (EOS included) at offset `off`
            # in it stays whole when off + L <= T + 1.
            off = self.n_tok[split] % align if align else 0
            if off and isinstance(doc, ChatRecord) and len(arr) + 1 <= align + 1 < off + len(arr) + 1:
                self.files[split].write(np.full(align - off, self.fill, dtype=self.dtype).tobytes())
                if self.masks:
                    self.masks[split].write(np.zeros(align - off, dtype=np.uint8).tobytes())
                self.n_tok[split] += align - off
            self.files[split].write(arr.tobytes())
            self.files[split].write(self.eos.tobytes())
            if self.masks:  # a conversation's EOS is never generated (decoding stops at <|end|>): context too
                flags = np.ones(len(arr) + 1, np.uint8)
                if gen is not None:
                    flags[:-1] = gen
                    flags[-1] = 0
                self.masks[split].write(flags.tobytes())
            self.n_chat += gen is not None
            self.n_docs[split] += 1
            self.n_tok[split] += len(arr) + 1

    def close(self) -> None:
        for f in (*self.files.values(), *self.masks.values()):
            f.close()
        if not self.n_chat:  # nothing to mask: every token is a target
            for p in self.tmp_mask.values():
                p.unlink(missing_ok=True)
            self.masks = {}

    def discard(self) -> None:
        for p in (*self.tmp.values(), *self.tmp_mask.values()):
            p.unlink(missing_ok=True)

    def tail_split(self, min_val_tokens: int) -> None:
        """Too few documents for a per-document split: move the val docs back and cut the tail off the stream."""
        tmp, tmp_mask = self.tmp, self.tmp_mask
        stream = np.concatenate([np.fromfile(tmp["train"], dtype=self.dtype), np.fromfile(tmp["val"], self.dtype)])
        n_val = max(min_val_tokens, int(len(stream) * self.val_fraction))
        if len(stream) - n_val < min_val_tokens:
            self.discard()
            raise CorpusError(
                f"the training corpus is too small: {len(stream)} tokens, need at least {2 * min_val_tokens} "
                f"(one training and one validation sequence of seq_len + 1 = {min_val_tokens} tokens)"
            )
        stream[:-n_val].tofile(tmp["train"])
        stream[-n_val:].tofile(tmp["val"])
        if self.masks:
            flags = np.concatenate([np.fromfile(tmp_mask["train"], np.uint8), np.fromfile(tmp_mask["val"], np.uint8)])
            flags[:-n_val].tofile(tmp_mask["train"])
            flags[-n_val:].tofile(tmp_mask["val"])
        self.n_tok = {"train": len(stream) - n_val, "val": n_val}
        self.n_docs = {"train": self.n_docs["train"] + self.n_docs["val"], "val": 0}  # val: a tail, not documents

    def commit(self) -> None:
        """fsync each finished file and rename it into place (meta.json, written after, commits the build)."""
        for s in SPLITS:
            fsync_path(self.tmp[s])
            replace_durably(self.tmp[s], self.out / f"{s}.bin")
            if self.masks:
                fsync_path(self.tmp_mask[s])
                replace_durably(self.tmp_mask[s], self.out / f"{s}.mask.bin")
            else:
                (self.out / f"{s}.mask.bin").unlink(missing_ok=True)  # from an earlier build of this directory


def build_shards(
    texts: TextSource,
    tokenizer: Tokenizer,
    out_dir: str | os.PathLike,
    min_val_tokens: int,
    val_fraction: float = 0.05,
    fingerprint: str = "",
    batch_docs: int = 256,
    align: int = 0,
    assistant_only: bool = False,
) -> Shards:
    """Tokenize the corpus once into out_dir/{train,val}.bin + meta.json; reuse them when meta.json matches
    (same corpus fingerprint, tokenizer, split). min_val_tokens (seq_len + 1) guarantees one val sequence.

    align (the trainer's seq_len, 0 = off): a chat record that fits one sequence but would straddle two starts at
    the next sequence boundary instead, the gap filled with the PAD token (the trainer ignores PAD targets).
    Otherwise a sequence boundary inside a conversation trains its answer without the passages it copies from.

    assistant_only: chat records train only on what the assistant says (its turns and their <|end|>); their
    system and user turns are context, as in supervised fine-tuning (torchtune's train_on_input=False, TRL's
    assistant-only loss). The flags go to {split}.mask.bin beside the tokens, written only when the corpus has a
    chat record (plain text trains on every token, EOS included)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer.eos_id is None:
        raise ValueError("the tokenizer has no EOS token; documents are separated by it")
    dtype = "uint16" if tokenizer.vocab_size <= 1 << 16 else "uint32"
    key = {
        "corpus": fingerprint,
        "tokenizer": tokenizer_hash(tokenizer),
        "val_fraction": val_fraction,
        "min_val_tokens": min_val_tokens,
        "dtype": dtype,
        "format": 1,
    }
    if align:  # only when asked: the keys (and resumable checkpoints) of runs without chat data stay the same
        key["align"] = align
    if assistant_only:
        key["loss"] = "assistant_only"
    meta_path = out / "meta.json"
    if meta_path.exists() and fingerprint:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            return open_shards(out, meta)

    writer = _ShardWriter(out, tokenizer, dtype, val_fraction, align, masks=assistant_only)
    try:
        buf: list[Doc] = []
        for doc in texts():
            if has_text(doc):
                buf.append(doc)
            if len(buf) >= batch_docs:
                writer.write(buf)
                buf = []
        if buf:
            writer.write(buf)
    except BaseException:  # an unreadable record, an interrupt: no half-written files left behind
        writer.close()
        writer.discard()
        raise
    writer.close()
    n_tok = writer.n_tok
    if n_tok["train"] + n_tok["val"] == 0:
        writer.discard()
        raise CorpusError("the training corpus is empty (no document has any text)")
    if n_tok["val"] < min_val_tokens or n_tok["train"] < min_val_tokens:
        writer.tail_split(min_val_tokens)
    writer.commit()
    meta = {
        "key": key,
        "dtype": dtype,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "tokens": writer.n_tok,
        "documents": writer.n_docs,
        "loss_mask": bool(writer.masks),
    }
    with atomic_write(meta_path, "w") as f:  # last: a crash before this leaves no meta, so shards are rebuilt
        f.write(json.dumps(meta, indent=2) + "\n")
    return open_shards(out, meta)
