"""Tokenizer: any Hugging Face `tokenizer.json` (byte-level BPE as in GPT-2, Llama-3 and Qwen; SentencePiece-style
Metaspace BPE with byte fallback as in Llama-2, Mistral and Mixtral) with the checkpoint's own chat template
(llm/chat_template.py), streaming detokenisation, and the training of pqrag's small byte-level BPE.

`Tokenizer.from_file(dir)` reads tokenizer.json and, from tokenizer_config.json, the special tokens (bos, eos, pad,
unk) and `chat_template` (a string, or a list of named templates: "default"); a chat_template.jinja file wins over
it, as in transformers.

pqrag's own tokenizers (`train_bpe_tokenizer`) have these special tokens (ids 0..6 in this order):
    <|endoftext|>  end of a document / of generation (eos)
    <|bos|>        start of a sequence
    <|pad|>        padding (never attended to)
    <|system|> <|user|> <|assistant|>  role headers of the chat template
    <|end|>        end of a chat turn (a stop token, with eos)
and ship CHAT_TEMPLATE in tokenizer_config.json like any checkpoint, so every model takes the same path:

    <|bos|><|system|>\n{system}<|end|>\n<|user|>\n{question + context}<|end|>\n<|assistant|>\n{answer}<|end|>\n

Message contents are encoded as plain text: a "<|end|>" typed by a user (or found in a retrieved document) does not
become the special token (chat_template.mark_control_tokens).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from common.errors import InvalidArgumentError
from common.fs import atomic_write
from llm.chat_template import ChatTemplate, control_token_re, mark_control_tokens, marked_re

EOS, BOS, PAD = "<|endoftext|>", "<|bos|>", "<|pad|>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = [EOS, BOS, PAD, SYSTEM, USER, ASSISTANT, END]
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('roles are system, user and assistant; got ' + message['role']) }}{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


def _token_content(v: object) -> str | None:
    if isinstance(v, dict):  # tokenizer_config.json may store {"content": "<s>", ...}
        v = v.get("content")
    return v if isinstance(v, str) else None


def _template_source(directory: str, cfg: Mapping[str, Any]) -> str | None:
    """The chat template of a tokenizer directory: chat_template.jinja, else tokenizer_config.json's (a string, or
    named templates of which "default" is the one), else chat_template.json's (processors)."""
    jinja_file = os.path.join(directory, "chat_template.jinja")
    if os.path.exists(jinja_file):
        with open(jinja_file, encoding="utf-8") as f:
            return f.read()
    source = cfg.get("chat_template")
    if source is None and os.path.exists(os.path.join(directory, "chat_template.json")):
        with open(os.path.join(directory, "chat_template.json"), encoding="utf-8") as f:
            source = json.load(f).get("chat_template")
    if isinstance(source, list):
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default") or (next(iter(named.values())) if len(named) == 1 else None)
    return source if isinstance(source, str) else None


class Tokenizer:
    """encode/decode, special ids, the chat template. Construct with `Tokenizer.from_file(path)` or
    `train_bpe_tokenizer`."""

    def __init__(
        self,
        tok: HFTokenizer,
        bos_token: str | None = BOS,
        eos_token: str | None = EOS,
        pad_token: str | None = PAD,
        unk_token: str | None = None,
        chat_template: str | None = None,
    ):
        self.tok = tok
        # A twin that treats special-token strings in the input as plain text (encode_special_tokens is a
        # tokenizer-wide switch, so flipping it per call would race between threads).
        self._plain = HFTokenizer.from_str(tok.to_str())
        self._plain.encode_special_tokens = True
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = bos_token, eos_token, pad_token, unk_token
        self.bos_id = self._id_or_none(bos_token)
        self.eos_id = self._id_or_none(eos_token)
        self.pad_id = self._id_or_none(pad_token)
        self.end_id = tok.token_to_id(END)  # pqrag's end-of-turn token; None for other tokenizers
        self.stop_ids = sorted({i for i in (self.eos_id, self.end_id) if i is not None})
        self.chat_template = ChatTemplate(chat_template) if chat_template else None
        spec = json.loads(tok.to_str())
        model = spec.get("model") or {}
        byte_ids = (tok.token_to_id(f"<0x{b:02X}>") for b in range(256)) if model.get("byte_fallback") else ()
        self._byte_tokens = frozenset(i for i in byte_ids if i is not None)  # <0xNN> pieces: decoded as a run
        self.kind = _kind(spec)
        self._added = {t["content"]: t for t in spec.get("added_tokens", [])}
        self.special_ids = frozenset(t["id"] for t in self._added.values() if t.get("special"))  # decode may skip

    def _id_or_none(self, token: str | None) -> int | None:
        return None if token is None else self.tok.token_to_id(token)

    # ---- io -----------------------------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Tokenizer:
        """Load tokenizer.json (a file, or a directory holding it and optionally tokenizer_config.json and
        chat_template.jinja)."""
        path = os.fspath(path)
        directory = path if os.path.isdir(path) else os.path.dirname(path)
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.exists(file):
            raise InvalidArgumentError(f"no tokenizer.json at {file!r}")
        tok = HFTokenizer.from_file(file)
        names: dict[str, str | None] = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": None}
        cfg: dict[str, Any] = {}
        cfg_file = os.path.join(directory, "tokenizer_config.json")
        if os.path.exists(cfg_file):  # checkpoints name their own specials (Mixtral: <s>, </s>, <unk>)
            with open(cfg_file, encoding="utf-8") as f:
                cfg = json.load(f)
            names = {k: _token_content(cfg.get(k)) for k in _SPECIAL_NAMES}
        return cls(tok, **names, chat_template=_template_source(directory, cfg))

    def save(self, directory: str | os.PathLike) -> None:
        """tokenizer.json + tokenizer_config.json (loadable by transformers.AutoTokenizer, chat template included)."""
        os.makedirs(directory, exist_ok=True)
        with atomic_write(os.path.join(directory, "tokenizer.json"), "w") as f:  # as tokenizers' save() writes it
            f.write(self.tok.to_str(pretty=True))
        cfg: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
        }
        if self.unk_token is not None:
            cfg["unk_token"] = self.unk_token
        if self.chat_template is not None:
            cfg["chat_template"] = self.chat_template.source
        cfg.update(add_bos_token=False, clean_up_tokenization_spaces=False, model_max_length=1 << 30)
        with atomic_write(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")

    # ---- encode / decode ------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.tok.id_to_token(token_id)

    def encode(
        self, text: str, add_bos: bool = False, allow_special: bool = False, add_special_tokens: bool = False
    ) -> list[int]:
        """Token ids of text. Special-token strings in text stay plain text unless allow_special; add_special_tokens
        applies the tokenizer's post-processor (Llama's <s>), add_bos prepends the bos token."""
        tok = self.tok if allow_special else self._plain
        ids = tok.encode(text, add_special_tokens=add_special_tokens).ids
        if add_bos:
            if self.bos_id is None:
                raise InvalidArgumentError("this tokenizer has no bos token; call encode(..., add_bos=False)")
            ids = [self.bos_id, *ids]
        return ids

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False) -> list[list[int]]:
        encs = self._plain.encode_batch(list(texts), add_special_tokens=False)
        pre = [self.bos_id] if add_bos and self.bos_id is not None else []
        return [pre + e.ids for e in encs]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def is_byte_token(self, token_id: int) -> bool:
        """A byte-fallback piece (<0xNN>): its text depends on the byte tokens around it."""
        return token_id in self._byte_tokens

    # ---- chat ---------------------------------------------------------------------------------------------------
    @property
    def special_tokens(self) -> dict[str, str]:
        """bos_token, eos_token, unk_token, pad_token (those set): the variables a chat template sees."""
        named = zip(_SPECIAL_NAMES, (self.bos_token, self.eos_token, self.unk_token, self.pad_token))
        return {k: v for k, v in named if v is not None}

    @property
    def accepts_system_role(self) -> bool:
        """Whether the chat template renders a system message (False without a template)."""
        return self.chat_template is not None and self.chat_template.accepts_system_role

    @functools.cached_property
    def _control(self) -> tuple[Any, Any]:
        """(control-token regex, marked-token regex): the special added tokens, and the other added tokens the
        template's text holds (whitespace aside), as transformers' sanitize_control_tokens."""
        assert self.chat_template is not None
        text = self.chat_template.literal_text
        control = [c for c, t in self._added.items() if t.get("special") or (c in text and not c.isspace())]
        return control_token_re(control), marked_re(self._added)

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        return_assistant_mask: bool = False,
        **variables: Any,
    ) -> str | list[int] | tuple[list[int], list[int]]:
        """Render [{"role": ..., "content": str}, ...] with the checkpoint's chat template, as transformers'
        apply_chat_template does (variables: extra template variables, e.g. enable_thinking).

        tokenize=True returns ids, with control tokens inside the messages encoded as plain text (no special-token
        injection); otherwise the ids equal transformers' encoding of the rendered text. return_assistant_mask (with
        tokenize): (ids, mask), mask[i] = 1 for the tokens a model generates in an assistant turn: the template's
        `{% generation %}` blocks when it has them, else each assistant message's content, with the whitespace
        between it and a control token before it, and the end-of-turn control token right after it. Raises InvalidArgumentError without a template, ChatTemplateError when the
        template refuses the conversation."""
        if self.chat_template is None:
            raise InvalidArgumentError(
                "this tokenizer has no chat template (tokenizer_config.json's chat_template or chat_template.jinja)"
            )
        if return_assistant_mask and not tokenize:
            raise InvalidArgumentError("return_assistant_mask needs tokenize=True")
        for i, m in enumerate(messages):
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise InvalidArgumentError(f"message {i} needs a str role and a str content, got {m!r}")
        template = self.chat_template
        variables = {**self.special_tokens, **variables}
        if not tokenize:
            return template.render(messages, add_generation_prompt, **variables)
        control_re, _ = self._control
        marked = mark_control_tokens(list(messages), control_re)
        text, spans = template.render_with_spans(marked, add_generation_prompt, **variables)
        ids, offsets = self._encode_marked(text)
        if not return_assistant_mask:
            return ids
        if not template.has_generation_blocks:
            spans = self._assistant_spans(text, marked, control_re)
        return ids, _overlap_mask(offsets, spans)

    def _encode_marked(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and character offsets (into text) of a rendering whose typed control tokens are marked: the marked
        ones encoded as plain text, the rest as transformers encodes a chat. Unmarked text is one encode call."""
        _, marks = self._control
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        pos = 0
        for m in [*marks.finditer(text), None]:
            end = len(text) if m is None else m.start()
            pieces = [(text[pos:end], pos, False)]
            if m is not None and m.group(1) is not None:  # a lone marker only breaks the text
                pieces.append((m.group(1), m.start(1), True))
            for piece, at, as_text in pieces:
                if piece:
                    piece_ids, piece_offsets = self._encode_piece(piece, at, as_text)
                    ids += piece_ids
                    offsets += piece_offsets
            pos = len(text) if m is None else m.end()
        return ids, offsets

    def _encode_piece(self, piece: str, at: int, as_text: bool) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and offsets of text[at : at + len(piece)]; as_text: control tokens in it stay plain text."""
        tok = self._plain if as_text else self.tok
        if at > 0:  # mid-text: encode after a newline so SentencePiece adds no prefix space, then drop the newline
            newline = tok.encode("\n", add_special_tokens=False).ids
            enc = tok.encode("\n" + piece, add_special_tokens=False)
            if enc.ids[: len(newline)] == newline:
                k = len(newline)
                return enc.ids[k:], [(a - 1 + at, b - 1 + at) for a, b in enc.offsets[k:]]
        enc = tok.encode(piece, add_special_tokens=False)
        return enc.ids, [(a + at, b + at) for a, b in enc.offsets]

    def _assistant_spans(self, text: str, messages: Sequence[Mapping[str, Any]], control_re) -> list[tuple[int, int]]:
        """Character spans of the assistant contents in a rendering (each message found after the previous one),
        each extended over a control token that directly follows it (the end of the turn: <|end|>, </s>, ...)."""
        spans, cursor = [], 0
        for m in messages:
            content = m["content"]
            start = text.find(content, cursor) if content else -1
            if start < 0 and content.strip():
                content = content.strip()
                start = text.find(content, cursor)
            if start < 0:
                if m["role"] == "assistant" and content:
                    raise InvalidArgumentError(
                        "the chat template rewrites assistant messages; an assistant mask needs a template with "
                        "{% generation %} blocks"
                    )
                continue
            end = start + len(content)
            cursor = end
            if m["role"] == "assistant":
                follow = control_re.match(text, end)
                # Whitespace between the turn's header (a control token) and the content counts as the answer's:
                # pqrag's trainer has always flagged the newline after <|assistant|>.
                head = text[:start].rstrip()
                if len(head) < start and re.search(f"(?:{control_re.pattern})$", head):
                    start = len(head)
                spans.append((start, follow.end() if follow else end))
        return spans

    def detokenizer(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, skip_special_tokens)


def _overlap_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """1 for every token whose character range overlaps a span (spans and offsets in order)."""
    mask = [0] * len(offsets)
    j = 0
    for i, (a, b) in enumerate(offsets):
        while j < len(spans) and a >= spans[j][1]:
            j += 1
        if j == len(spans):
            break
        if b > spans[j][0] and b > a:
            mask[i] = 1
    return mask


def _kind(spec: Mapping[str, Any]) -> str:
    """What kind of tokenizer a tokenizer.json is, in words (pqrag models inspect)."""
    model = spec.get("model") or {}

    def types(part: Any) -> list[str]:
        if not isinstance(part, dict):
            return []
        inner = part.get("pretokenizers") or part.get("decoders") or part.get("normalizers") or []
        return [part.get("type", "")] + [t for p in inner for t in types(p)]

    parts = types(spec.get("pre_tokenizer")) + types(spec.get("decoder")) + types(spec.get("normalizer"))
    if "ByteLevel" in parts:
        return f"byte-level {model.get('type', '?')}"
    if "Metaspace" in parts or "Prepend" in parts or "Replace" in parts:
        fallback = " with byte fallback" if model.get("byte_fallback") else ""
        return f"SentencePiece-style (Metaspace) {model.get('type', '?')}{fallback}"
    return str(model.get("type", "unknown"))


class IncrementalDetokenizer:
    """Streaming text from streaming token ids whose concatenation is exactly `tokenizer.decode(all ids)`.

    vLLM's prefix/read offsets: decoding ids[prefix:] and ids[prefix:read] and emitting the difference handles
    tokenizers whose decode of a token depends on its left neighbour (SentencePiece's leading space is dropped at the
    start of a decode, here at the start of both windows alike). Text is held back while it ends in U+FFFD (the rest
    of a UTF-8 character split over byte tokens may follow) and, for byte-fallback tokenizers, while the last token is
    a byte piece: a run of <0xNN> pieces decodes as a whole (one invalid byte turns the whole run into U+FFFDs), so a
    window never starts inside one. Each step decodes a few tokens only.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.read_offset = 0  # ids[:read_offset] are emitted
        self.prefix_offset = 0  # the left context window starts here
        self.text = ""  # everything emitted so far

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def step(self, new_ids: int | Sequence[int]) -> str:
        """Add generated ids; return the newly completed text (possibly "")."""
        self.ids.extend([new_ids] if isinstance(new_ids, int) else new_ids)
        if self._in_byte_run():
            return ""  # inside a run of byte pieces: its text is known when the run ends
        return self._emit(final=False)

    def _in_byte_run(self) -> bool:
        """Whether the last token decode shows is a byte piece (skipped specials do not end a run)."""
        tok = self.tokenizer
        for i in reversed(self.ids):
            if not (self.skip_special_tokens and i in tok.special_ids):
                return tok.is_byte_token(i)
        return False

    def flush(self) -> str:
        """At the end of generation: whatever is still held back (an incomplete character decodes as U+FFFD)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        if len(new_text) <= len(prefix_text) or (new_text.endswith("\ufffd") and not final):
            return ""  # nothing complete yet (an incomplete character, or a token that decodes to nothing)
        delta = new_text[len(prefix_text) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += delta
        return delta


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    min_frequency: int = 2,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style: any UTF-8 text round-trips, no unknown tokens) on texts.

    The vocabulary holds the specials (ids 0.. in order), the 256 byte symbols, then merges up to vocab_size.
    """
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size={vocab_size} must cover 256 bytes + {len(special_tokens)} special tokens")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(tok, chat_template=CHAT_TEMPLATE)
