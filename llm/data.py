"""Training data: corpus readers, tokenizer training, memory-mapped token shards, a resumable batch sampler.

    texts = corpus_texts(sources)                           # a re-iterable stream of documents (str | ChatRecord)
    tok = train_tokenizer(texts(), vocab_size=4096)          # byte-level BPE (only when no --tokenizer is given)
    shards = build_shards(texts, tok, "out/data", seq_len)   # tokenize once -> out/data/{train,val}.bin + meta.json
    sampler = BatchSampler(shards.train.num_sequences(seq_len), batch_size, seed)
    x, y = shards.train.batch(sampler.next_indices(), seq_len)   # (B, T) inputs and next-token targets

Shards are flat token streams (uint16 when the vocabulary fits, else uint32): every document followed by the EOS
token, so packed sequences span document boundaries and the model learns what EOS means. Sequence i of a shard is
tokens[i*T : i*T + T + 1] (inputs = the first T, targets = the last T): fixed-length, no padding, no token lost.

The train/val split is per document, by a hash of its text, so it does not depend on the order the files are read
in, and a document never has tokens on both sides. Corpora too small for that (a single file) fall back to the
last tokens of the stream.

Chat records (.jsonl/.json records with a "messages" list instead of "text", e.g. from llm.rag_sft) are rendered
through the tokenizer's chat template, special tokens included, so a model fine-tuned on them learns the format
the server prompts it with: <|bos|><|system|>\n...<|end|>\n<|user|>\n...<|end|>\n<|assistant|>\n...<|end|>\n<EOS>.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sqlite3
import sys
import sysconfig
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from llm.tokenizer import Tokenizer, train_bpe_tokenizer


class CorpusError(ValueError):
    """The training corpus is missing, unreadable or empty (raised before any long work starts)."""


@dataclass(frozen=True)
class ChatRecord:
    """One conversation: [{"role": "system"|"user"|"assistant", "content": str}, ...], tokenized with the chat
    template (not as plain text) by build_shards."""

    messages: tuple[dict[str, str], ...]

    @classmethod
    def parse(cls, messages: Any, where: str) -> ChatRecord:
        """Validated messages of a record; CorpusError naming where (file:line) on a malformed one."""
        from llm.tokenizer import ROLE_TOKENS

        if not isinstance(messages, list) or not messages:
            raise CorpusError(f'{where}: "messages" must be a non-empty list of {{role, content}} objects')
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLE_TOKENS or not isinstance(m.get("content"), str):
                raise CorpusError(f"{where}: message {i} needs role in {sorted(ROLE_TOKENS)} and a str content")
        return cls(tuple({"role": m["role"], "content": m["content"]} for m in messages))

    def text(self) -> str:
        """The contents as plain text: what BPE training sees (the role tokens are specials, added anyway)."""
        return "\n".join(m["content"] for m in self.messages)

    def key(self) -> str:
        """Canonical form for the train/val split hash: stable across runs, differs between conversations."""
        return json.dumps(self.messages, ensure_ascii=False, sort_keys=True)


Doc = Union[str, ChatRecord]
TextSource = Callable[[], Iterator[Doc]]  # called once per pass (tokenizer training, then tokenization)


def _has_text(doc: Doc) -> bool:
    return any(m["content"].strip() for m in doc.messages) if isinstance(doc, ChatRecord) else bool(doc.strip())


# ---- corpus readers -----------------------------------------------------------------------------------------------

CORPUS_SUFFIXES = {".txt", ".md", ".markdown", ".jsonl", ".json", ".html", ".htm"}


def file_texts(paths: Sequence[str | os.PathLike]) -> Iterator[Doc]:
    """Documents of files and folders: .txt/.md as is, .jsonl/.json records' "text" (or a ChatRecord for records
    with "messages"), .html visible text.

    Reuses the ingestion loaders (retrieval.loaders), so `pqrag train` reads what `pqrag ingest` reads; only the
    chat records are the trainer's own (ingestion skips them: they have no "text")."""
    from retrieval.loaders import JSON_TYPES, iter_files, json_records, load_file, record_to_document, relative_name

    for p in paths:
        if not os.path.exists(p):
            raise CorpusError(f"training data path {os.fspath(p)!r} does not exist")
    skip = lambda _msg: None  # noqa: E731 - unsupported files and records without text are not training data
    try:
        for path, root in iter_files([os.fspath(p) for p in paths]):
            file_type = JSON_TYPES.get(path.suffix.lower())
            if file_type is None:
                yield from (doc.text for doc in load_file(path, root, skip) if doc.text.strip())
                continue
            rel = relative_name(path, root)
            for rec, default_id, meta, where in json_records(path, rel, file_type, {}, skip):
                if isinstance(rec, dict) and "messages" in rec:
                    chat = ChatRecord.parse(rec["messages"], where)
                    if _has_text(chat):
                        yield chat
                elif isinstance(rec, dict):
                    doc = record_to_document(rec, default_id, meta, rel)
                    if doc is not None and doc.text.strip():
                        yield doc.text
    except (OSError, UnicodeError) as exc:
        raise CorpusError(f"cannot read training data: {exc}") from exc


def collection_texts(name: str, data_dir: str | os.PathLike) -> Iterator[str]:
    """Full document texts of a pqrag collection (not its chunks: chunks overlap, documents do not), in doc_id
    order. Reads the SQLite store directly, read-only, so it works while a server holds the data directory."""
    from retrieval.catalog import DB_FILE

    db = Path(data_dir) / DB_FILE
    if not db.exists():
        raise CorpusError(f"no pqrag store at {db} (is --data-dir the directory `pqrag serve` uses?)")
    # mode=ro: a training run must never write to the service's store (Store() would create tables).
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT cid FROM collections WHERE name = ?", (name,)).fetchone()
        if row is None:
            names = [r[0] for r in conn.execute("SELECT name FROM collections ORDER BY name")]
            raise CorpusError(f"collection {name!r} not found in {db}; it has {names}")
        for (text,) in conn.execute("SELECT text FROM documents WHERE cid = ? ORDER BY doc_id", (row[0],)):
            if text.strip():
                yield text
    finally:
        conn.close()


# Folders of the stdlib whose docstrings are tests, demos or vendored code rather than documentation.
_SKIP_STDLIB_DIRS = {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "turtledemo",
    "ensurepip",
    "__pycache__",
    "config-3",
    "tkinter",
}


def _module_doc(path: Path, module: str) -> str | None:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return None
    parts: list[str] = []
    doc = ast.get_docstring(tree)
    if doc:
        parts.append(f"{module}\n\n{doc}")

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                d = ast.get_docstring(child)
                if d:
                    parts.append(f"class {prefix}{child.name}\n{d}")
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                d = ast.get_docstring(child)
                if d:
                    parts.append(f"{prefix}{child.name}({ast.unparse(child.args)})\n{d}")

    visit(tree, f"{module}.")
    return "\n\n".join(parts) if parts else None


def pydoc_texts() -> Iterator[str]:
    """Python's own documentation: the language reference topics `help()` shows (pydoc_data.topics), then one
    document per stdlib module with its module, class and function docstrings (read with ast, nothing imported).
    About 2 M characters on CPython 3.11; fixed for a given Python version, so runs are reproducible."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]
    root = Path(sysconfig.get_paths()["stdlib"])
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_STDLIB_DIRS and not d.startswith((".", "config-")))
        for fn in sorted(filenames):
            if not fn.endswith(".py") or (fn.startswith("_") and fn != "__init__.py"):
                continue  # private modules document implementation details
            rel = (Path(dirpath) / fn).relative_to(root).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            text = _module_doc(Path(dirpath) / fn, ".".join(parts))
            if text:
                yield text


@dataclass
class CorpusSpec:
    """Where the training text comes from (any combination); `texts()` streams it, `fingerprint()` names it."""

    paths: Sequence[str] = ()
    collection: str | None = None
    data_dir: str | None = None
    pydoc: bool = False

    def validate(self) -> None:
        if not self.paths and not self.collection and not self.pydoc:
            raise CorpusError("no training data: pass --data PATH..., --from-collection NAME, or --pydoc")
        for p in self.paths:
            if not os.path.exists(p):
                raise CorpusError(f"training data path {p!r} does not exist")
            if not os.access(p, os.R_OK):
                raise CorpusError(f"training data path {p!r} is not readable")
        if self.collection:
            from retrieval.catalog import DB_FILE

            if not (Path(self.data_dir or "data") / DB_FILE).exists():
                raise CorpusError(
                    f"--from-collection {self.collection!r}: no pqrag store in --data-dir {self.data_dir or 'data'!r}"
                )

    def texts(self) -> Iterator[Doc]:
        if self.paths:
            yield from file_texts(self.paths)
        if self.collection:
            yield from collection_texts(self.collection, self.data_dir or "data")
        if self.pydoc:
            yield from pydoc_texts()

    def fingerprint(self) -> str:
        """Changes when the inputs do (file sizes and mtimes, the store's sequence counter, the Python version)."""
        h = hashlib.sha256()
        for p in self.paths:
            files = [Path(p)] if os.path.isfile(p) else sorted(f for f in Path(p).rglob("*") if f.is_file())
            for f in files:
                if f.suffix.lower() in CORPUS_SUFFIXES:
                    st = f.stat()
                    h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        if self.collection:
            from retrieval.catalog import DB_FILE

            db = Path(self.data_dir or "data") / DB_FILE
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                seq = conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
            finally:
                conn.close()
            h.update(f"collection:{db.resolve()}:{self.collection}:{seq}\n".encode())
        if self.pydoc:
            h.update(f"pydoc:{sys.version}\n".encode())
        return h.hexdigest()[:16]


# ---- tokenizer ----------------------------------------------------------------------------------------------------


def train_tokenizer(texts_iter: Iterable[Doc], vocab_size: int = 4096) -> Tokenizer:
    """A byte-level BPE trained on texts (see tokenizer.train_bpe_tokenizer): specials first, 256 byte symbols,
    then merges up to vocab_size. A small corpus may stop short of vocab_size; size the model by
    `tokenizer.vocab_size`, not by the request. Chat records contribute their contents."""
    count = 0

    def counted() -> Iterator[str]:
        nonlocal count
        for doc in texts_iter:
            t = doc.text() if isinstance(doc, ChatRecord) else doc
            if t.strip():
                count += 1
                yield t

    tok = train_bpe_tokenizer(counted(), vocab_size=vocab_size)
    if count == 0:
        raise CorpusError("the training corpus is empty (no document has any text)")
    return tok


def tokenizer_hash(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.tok.to_str().encode()).hexdigest()[:16]


# ---- shards -------------------------------------------------------------------------------------------------------


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
            return _open_shards(out, meta)

    eos = np.array([tokenizer.eos_id], dtype=dtype)
    fill = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    n_docs = {"train": 0, "val": 0}
    n_tok = {"train": 0, "val": 0}
    n_chat = 0
    tmp = {s: out / f"{s}.bin.tmp" for s in ("train", "val")}
    tmp_mask = {s: out / f"{s}.mask.bin.tmp" for s in ("train", "val")}
    files = {s: open(p, "wb") for s, p in tmp.items()}
    masks = {s: open(p, "wb") for s, p in tmp_mask.items()} if assistant_only else {}
    try:

        def flush(docs: list[Doc]) -> None:
            nonlocal n_chat
            for doc, (ids, gen) in zip(docs, _encode_docs(tokenizer, docs)):
                split = "val" if _split_is_val(doc, val_fraction) else "train"
                arr = np.asarray(ids, dtype=dtype)
                # Sequence i is tokens[i*T : i*T + T + 1]: a record of L tokens (EOS included) at offset `off`
                # in it stays whole when off + L <= T + 1.
                off = n_tok[split] % align if align else 0
                if off and isinstance(doc, ChatRecord) and len(arr) + 1 <= align + 1 < off + len(arr) + 1:
                    files[split].write(np.full(align - off, fill, dtype=dtype).tobytes())
                    if masks:
                        masks[split].write(np.zeros(align - off, dtype=np.uint8).tobytes())
                    n_tok[split] += align - off
                files[split].write(arr.tobytes())
                files[split].write(eos.tobytes())
                if masks:  # a conversation's EOS is never generated (decoding stops at <|end|>): context too
                    flags = np.ones(len(arr) + 1, np.uint8)
                    if gen is not None:
                        flags[:-1] = gen
                        flags[-1] = 0
                    masks[split].write(flags.tobytes())
                n_chat += gen is not None
                n_docs[split] += 1
                n_tok[split] += len(arr) + 1

        buf: list[Doc] = []
        for doc in texts():
            if _has_text(doc):
                buf.append(doc)
            if len(buf) >= batch_docs:
                flush(buf)
                buf = []
        if buf:
            flush(buf)
    finally:
        for f in (*files.values(), *masks.values()):
            f.close()
    if not n_chat:  # nothing to mask: every token is a target
        for p in tmp_mask.values():
            p.unlink(missing_ok=True)
        masks = {}
    if n_tok["train"] + n_tok["val"] == 0:
        for p in (*tmp.values(), *tmp_mask.values()):
            p.unlink(missing_ok=True)
        raise CorpusError("the training corpus is empty (no document has any text)")

    if n_tok["val"] < min_val_tokens or n_tok["train"] < min_val_tokens:
        # Too few documents for a per-document split: move the val docs back and cut the tail off the stream.
        stream = np.concatenate([np.fromfile(tmp["train"], dtype=dtype), np.fromfile(tmp["val"], dtype=dtype)])
        n_val = max(min_val_tokens, int(len(stream) * val_fraction))
        if len(stream) - n_val < min_val_tokens:
            for p in (*tmp.values(), *tmp_mask.values()):
                p.unlink(missing_ok=True)
            raise CorpusError(
                f"the training corpus is too small: {len(stream)} tokens, need at least {2 * min_val_tokens} "
                f"(one training and one validation sequence of seq_len + 1 = {min_val_tokens} tokens)"
            )
        stream[:-n_val].tofile(tmp["train"])
        stream[-n_val:].tofile(tmp["val"])
        if masks:
            flags = np.concatenate([np.fromfile(tmp_mask["train"], np.uint8), np.fromfile(tmp_mask["val"], np.uint8)])
            flags[:-n_val].tofile(tmp_mask["train"])
            flags[-n_val:].tofile(tmp_mask["val"])
        n_tok = {"train": len(stream) - n_val, "val": n_val}
        n_docs = {"train": n_docs["train"] + n_docs["val"], "val": 0}  # val is a tail, not whole documents
    for s in ("train", "val"):
        os.replace(tmp[s], out / f"{s}.bin")
        if masks:
            os.replace(tmp_mask[s], out / f"{s}.mask.bin")
        else:
            (out / f"{s}.mask.bin").unlink(missing_ok=True)  # from an earlier build of this directory
    meta = {
        "key": key,
        "dtype": dtype,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "tokens": n_tok,
        "documents": n_docs,
        "loss_mask": bool(masks),
    }
    tmp_meta = out / "meta.json.tmp"
    tmp_meta.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp_meta, meta_path)  # written last: a crash before this leaves no meta, so shards are rebuilt
    return _open_shards(out, meta)


def _open_shards(out: Path, meta: dict) -> Shards:
    def shard(split: str) -> TokenShard:
        mask = out / f"{split}.mask.bin" if meta.get("loss_mask") else None
        return TokenShard(out / f"{split}.bin", meta["dtype"], mask)

    return Shards(shard("train"), shard("val"), meta)


# ---- sampling -----------------------------------------------------------------------------------------------------


class BatchSampler:
    """Global batches of sequence indices: a fresh permutation per epoch (seeded by (seed, epoch)), consumed in
    order. The whole state is one integer, `position` (sequences consumed), so a checkpoint stores it and a
    resumed run draws exactly the batches an uninterrupted run would; DDP ranks draw the same global batch and
    each takes its slice."""

    def __init__(self, num_sequences: int, batch_size: int, seed: int, position: int = 0):
        if num_sequences < 1:
            raise ValueError("no sequences to sample from")
        self.n, self.batch_size, self.seed, self.position = num_sequences, batch_size, seed, position
        self._epoch, self._perm = -1, np.zeros(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm

    @property
    def epoch(self) -> float:
        return self.position / self.n

    def next_indices(self) -> np.ndarray:
        """The next global batch: (batch_size,) int64 indices (wrapping into the next epoch when needed)."""
        out = []
        need = self.batch_size
        while need:
            epoch, offset = divmod(self.position, self.n)
            take = min(need, self.n - offset)
            out.append(self._permutation(epoch)[offset : offset + take])
            self.position += take
            need -= take
        return np.concatenate(out)

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "num_sequences": self.n}

    def load_state_dict(self, state: dict) -> None:
        if state["num_sequences"] != self.n:
            raise ValueError(f"data position is for {state['num_sequences']} sequences, the shards have {self.n}")
        self.position, self.seed = int(state["position"]), int(state["seed"])
