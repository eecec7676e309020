"""Where the training text comes from: files and folders, a pqrag collection, Python's own documentation.

    spec = CorpusSpec(paths=["docs/", "sft.jsonl"], collection=None, pydoc=False)
    spec.validate()              # CorpusError now, before any work, for a missing path, store or collection
    for doc in spec.texts(): ...  # a stream of documents: str, or ChatRecord for {"messages": [...]} records
    spec.fingerprint()           # names the inputs: the shard cache key (shards.build_shards) includes it

Files are read as `pqrag ingest` reads them (retrieval's loaders); a collection through retrieval's public API
(document_texts, collection_version), never its tables, so it works while a server owns the data directory.

Chat records (.jsonl/.json records with a "messages" list instead of "text", e.g. from rag.sft_data) are rendered
through the tokenizer's chat template, special tokens included, so a model fine-tuned on them learns the format
the server prompts it with: <|bos|><|system|>\\n...<|end|>\\n<|user|>\\n...<|end|>\\n<|assistant|>\\n...<|end|>\\n<EOS>.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import InvalidArgumentError, NotFoundError


class CorpusError(InvalidArgumentError):
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


Doc = str | ChatRecord
TextSource = Callable[[], Iterator[Doc]]  # called once per pass (tokenizer training, then tokenization)


def has_text(doc: Doc) -> bool:
    return any(m["content"].strip() for m in doc.messages) if isinstance(doc, ChatRecord) else bool(doc.strip())


# ---- corpus readers -----------------------------------------------------------------------------------------------

CORPUS_SUFFIXES = {".txt", ".md", ".markdown", ".jsonl", ".json", ".html", ".htm"}


def file_texts(paths: Sequence[str | os.PathLike]) -> Iterator[Doc]:
    """Documents of files and folders: .txt/.md as is, .jsonl/.json records' "text" (or a ChatRecord for records
    with "messages"), .html visible text.

    Reuses the ingestion loaders (retrieval's), so `pqrag train` reads what `pqrag ingest` reads; only the chat
    records are the trainer's own (ingestion skips them: they have no "text")."""
    from retrieval import JSON_TYPES, iter_files, json_records, load_file, record_to_document, relative_name

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
                    if has_text(chat):
                        yield chat
                elif isinstance(rec, dict):
                    doc = record_to_document(rec, default_id, meta, rel)
                    if doc is not None and doc.text.strip():
                        yield doc.text
    except (OSError, UnicodeError) as exc:
        raise CorpusError(f"cannot read training data: {exc}") from exc


def _collection_error(exc: NotFoundError, name: str, data_dir: str | os.PathLike) -> CorpusError:
    return CorpusError(f"{exc} (--from-collection {name!r}, --data-dir {os.fspath(data_dir)!r})")


def collection_texts(data_dir: str | os.PathLike, name: str) -> Iterator[str]:
    """Full document texts of a pqrag collection (not its chunks: chunks overlap, documents do not), in doc_id
    order, read-only, so it works while a server holds the data directory. CorpusError here (not on the first
    next()) for a missing store or collection."""
    from retrieval import document_texts

    try:
        texts = document_texts(data_dir, name)
    except NotFoundError as exc:
        raise _collection_error(exc, name, data_dir) from None
    return (text for text in texts if text.strip())


def collection_fingerprint(data_dir: str | os.PathLike, name: str) -> str:
    """Changes when the collection's documents may have (retrieval's collection_version)."""
    from retrieval import collection_version

    try:
        return collection_version(data_dir, name)
    except NotFoundError as exc:
        raise _collection_error(exc, name, data_dir) from None


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


# ---- the corpus of a run ------------------------------------------------------------------------------------------


@dataclass
class CorpusSpec:
    """Where the training text comes from (any combination); `texts()` streams it, `fingerprint()` names it."""

    paths: Sequence[str] = ()
    collection: str | None = None
    data_dir: str | None = None
    pydoc: bool = False

    @property
    def collection_dir(self) -> str:
        return self.data_dir or "data"

    def validate(self) -> None:
        """CorpusError for a source that cannot be read: cheap checks, before any work."""
        if not self.paths and not self.collection and not self.pydoc:
            raise CorpusError("no training data: pass --data PATH..., --from-collection NAME, or --pydoc")
        for p in self.paths:
            if not os.path.exists(p):
                raise CorpusError(f"training data path {p!r} does not exist")
            if not os.access(p, os.R_OK):
                raise CorpusError(f"training data path {p!r} is not readable")
        if self.collection:
            collection_fingerprint(self.collection_dir, self.collection)  # the store and the collection exist

    def texts(self) -> Iterator[Doc]:
        if self.paths:
            yield from file_texts(self.paths)
        if self.collection:
            yield from collection_texts(self.collection_dir, self.collection)
        if self.pydoc:
            yield from pydoc_texts()

    def fingerprint(self) -> str:
        """Changes when the inputs do (file sizes and mtimes, the collection's version, the Python version)."""
        h = hashlib.sha256()
        for p in self.paths:
            files = [Path(p)] if os.path.isfile(p) else sorted(f for f in Path(p).rglob("*") if f.is_file())
            for f in files:
                if f.suffix.lower() in CORPUS_SUFFIXES:
                    st = f.stat()
                    h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        if self.collection:
            h.update(f"collection:{collection_fingerprint(self.collection_dir, self.collection)}\n".encode())
        if self.pydoc:
            h.update(f"pydoc:{sys.version}\n".encode())
        return h.hexdigest()[:16]
