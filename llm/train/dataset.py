"""A run's dataset: its tokenizer (reused, or a BPE trained on the corpus) and its token shards in OUT/data.

Rank 0 does the work once; the other ranks wait for it, then open the same files. If rank 0 fails (an empty
corpus, an unreadable file), every rank raises the same CorpusError instead of hanging at the next collective.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from common.errors import InvalidArgumentError
from llm.config import ModelConfig
from llm.tokenizer import SPECIAL_TOKENS, Tokenizer, train_bpe_tokenizer
from llm.train.config import TrainConfig
from llm.train.corpus import ChatRecord, CorpusError, CorpusSpec, Doc
from llm.train.distributed import DistInfo, broadcast_from_main
from llm.train.shards import Shards, build_shards


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


def run_tokenizer(cfg: TrainConfig, model_cfg: ModelConfig, spec: CorpusSpec, out: Path) -> Tokenizer:
    """The tokenizer of this run: its own on --resume, a given one (or the --init-from model's), else a new BPE
    saved to out/tokenizer.json."""
    if cfg.resume:
        tok = Tokenizer.from_file(out)  # the run's own tokenizer: the checkpoint's vocabulary
    elif cfg.tokenizer or cfg.init_from:
        tok = Tokenizer.from_file(cfg.tokenizer or cfg.init_from)  # an init model's embedding rows fit it
    else:
        # The tiny preset's 256-token vocabulary cannot hold 256 bytes + the specials; give it room.
        vocab = cfg.vocab_size or max(model_cfg.vocab_size, 256 + len(SPECIAL_TOKENS) + 249)
        tok = train_tokenizer(spec.texts(), vocab_size=vocab)
    if tok.eos_id is None:
        raise InvalidArgumentError(f"tokenizer {cfg.tokenizer!r} has no EOS token to separate documents")
    if not cfg.resume:
        tok.save(out)
    return tok


def prepare_data(
    cfg: TrainConfig, model_cfg: ModelConfig, spec: CorpusSpec, out: Path, info: DistInfo
) -> tuple[Tokenizer, Shards]:
    """Rank 0: load or train the tokenizer (saved to out/tokenizer.json), tokenize once into out/data/. The other
    ranks wait, then open the same files."""
    # Chat records start on sequence boundaries (see build_shards). Only files can hold them: pydoc and
    # collection corpora keep their unaligned shard key, so their checkpoints stay resumable.
    align = cfg.seq_len if spec.paths else 0
    assistant_only = bool(spec.paths) and not cfg.train_on_prompt

    def shards(tok: Tokenizer) -> Shards:
        return build_shards(
            spec.texts,
            tok,
            out / "data",
            min_val_tokens=cfg.seq_len + 1,
            val_fraction=cfg.val_fraction,
            fingerprint=spec.fingerprint(),
            align=align,
            assistant_only=assistant_only,
        )

    error = None
    if info.is_main:
        try:
            shards(run_tokenizer(cfg, model_cfg, spec, out))
        except (ValueError, OSError) as exc:
            if not info.enabled:
                raise
            error = str(exc)
    error = broadcast_from_main(error, info)
    if error:
        raise CorpusError(error)
    tok = Tokenizer.from_file(out)
    return tok, shards(tok)  # reuses rank 0's files
