"""Tokenizer: a thin wrapper over Hugging Face `tokenizers` (tokenizer.json), the chat template, streaming
detokenization, and training of a small byte-level BPE.

Special tokens of our trained tokenizers (ids 0..6 in this order):
    <|endoftext|>  end of a document / of generation (eos)
    <|bos|>        start of a sequence
    <|pad|>        padding (never attended to)
    <|system|> <|user|> <|assistant|>  role headers of the chat template
    <|end|>        end of a chat turn (a stop token, with eos)

Chat template (what `apply_chat_template` renders; also saved as a Jinja template in tokenizer_config.json so
`transformers.AutoTokenizer` renders the same text):

    <|bos|><|system|>\n{system}<|end|>\n<|user|>\n{question + context}<|end|>\n<|assistant|>\n{answer}<|end|>\n

With add_generation_prompt=True it ends with "<|assistant|>\n" and the model writes the answer, then <|end|>.
Message contents are encoded as plain text: a "<|end|>" typed by a user (or found in a retrieved document)
does not become the special token.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from common.fs import atomic_write

EOS, BOS, PAD = "<|endoftext|>", "<|bos|>", "<|pad|>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = [EOS, BOS, PAD, SYSTEM, USER, ASSISTANT, END]
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def _token_content(v: object) -> str | None:
    if isinstance(v, dict):  # tokenizer_config.json may store {"content": "<s>", ...}
        v = v.get("content")
    return v if isinstance(v, str) else None


class Tokenizer:
    """encode/decode, special ids, chat template. Construct with `Tokenizer.from_file(path)` or `train_bpe_tokenizer`."""

    def __init__(
        self, tok: HFTokenizer, bos_token: str | None = BOS, eos_token: str | None = EOS, pad_token: str | None = PAD
    ):
        self.tok = tok
        # A twin that treats special-token strings in the input as plain text (encode_special_tokens is a
        # tokenizer-wide switch, so flipping it per call would race between threads).
        self._plain = HFTokenizer.from_str(tok.to_str())
        self._plain.encode_special_tokens = True
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.bos_id = self._id_or_none(bos_token)
        self.eos_id = self._id_or_none(eos_token)
        self.pad_id = self._id_or_none(pad_token)
        self.end_id = tok.token_to_id(END)  # None for tokenizers without our chat tokens
        self.stop_ids = sorted({i for i in (self.eos_id, self.end_id) if i is not None})

    def _id_or_none(self, token: str | None) -> int | None:
        return None if token is None else self.tok.token_to_id(token)

    # ---- io -----------------------------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Tokenizer:
        """Load tokenizer.json (a file, or a directory holding it and optionally tokenizer_config.json)."""
        path = os.fspath(path)
        directory = path if os.path.isdir(path) else os.path.dirname(path)
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.exists(file):
            raise ValueError(f"no tokenizer.json at {file!r}")
        tok = HFTokenizer.from_file(file)
        names = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
        cfg_file = os.path.join(directory, "tokenizer_config.json")
        if os.path.exists(cfg_file):  # foreign tokenizers name their own specials (Mixtral: <s>, </s>)
            with open(cfg_file) as f:
                cfg = json.load(f)
            names = {k: _token_content(cfg.get(k)) for k in names}
        return cls(tok, **names)

    def save(self, directory: str | os.PathLike) -> None:
        """tokenizer.json + tokenizer_config.json (loadable by transformers.AutoTokenizer, chat template included)."""
        os.makedirs(directory, exist_ok=True)
        with atomic_write(os.path.join(directory, "tokenizer.json"), "w") as f:  # as tokenizers' save() writes it
            f.write(self.tok.to_str(pretty=True))
        cfg = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "chat_template": CHAT_TEMPLATE,
            "add_bos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1 << 30,
        }
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

    def encode(self, text: str, add_bos: bool = False, allow_special: bool = False) -> list[int]:
        """Token ids of text. Special-token strings in text stay plain text unless allow_special."""
        tok = self.tok if allow_special else self._plain
        ids = tok.encode(text, add_special_tokens=False).ids
        if add_bos:
            if self.bos_id is None:
                raise ValueError("this tokenizer has no bos token; call encode(..., add_bos=False)")
            ids = [self.bos_id, *ids]
        return ids

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False) -> list[list[int]]:
        encs = self._plain.encode_batch(list(texts), add_special_tokens=False)
        pre = [self.bos_id] if add_bos and self.bos_id is not None else []
        return [pre + e.ids for e in encs]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---- chat ---------------------------------------------------------------------------------------------------
    def apply_chat_template(
        self,
        messages: Sequence[dict[str, str]],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        return_assistant_mask: bool = False,
    ) -> str | list[int] | tuple[list[int], list[int]]:
        """Render [{"role": "system"|"user"|"assistant", "content": str}, ...] with the template above.
        tokenize=True returns ids, with the contents encoded as plain text (no special-token injection).
        return_assistant_mask (with tokenize): (ids, mask), mask[i] = 1 for the tokens a model generates in an
        assistant turn (its content and the <|end|> that stops it), 0 for everything the prompt supplies."""
        if return_assistant_mask and not tokenize:
            raise ValueError("return_assistant_mask needs tokenize=True")
        for i, m in enumerate(messages):
            if m.get("role") not in ROLE_TOKENS or not isinstance(m.get("content"), str):
                raise ValueError(f"message {i} needs role in {sorted(ROLE_TOKENS)} and a str content, got {m!r}")
        if not tokenize:
            parts = [self.bos_token or ""]
            parts += [f"{ROLE_TOKENS[m['role']]}\n{m['content']}{END}\n" for m in messages]
            if add_generation_prompt:
                parts.append(f"{ASSISTANT}\n")
            return "".join(parts)
        special = {t: self.tok.token_to_id(t) for t in (END, *ROLE_TOKENS.values())}
        if any(v is None for v in special.values()):
            raise ValueError("this tokenizer lacks the chat special tokens; train it with train_bpe_tokenizer")
        newline = self._plain.encode("\n", add_special_tokens=False).ids
        ids = [self.bos_id] if self.bos_id is not None else []
        mask = [0] * len(ids)
        for m in messages:
            body = self._plain.encode("\n" + m["content"], add_special_tokens=False).ids + [special[END]]
            ids += [special[ROLE_TOKENS[m["role"]]], *body, *newline]
            gen = int(m["role"] == "assistant")
            mask += [0, *[gen] * len(body), *[0] * len(newline)]
        if add_generation_prompt:
            ids.append(special[ASSISTANT])
            ids += newline
            mask += [0] * (1 + len(newline))
        return (ids, mask) if return_assistant_mask else ids

    def detokenizer(self, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, prompt_ids, skip_special_tokens)


class IncrementalDetokenizer:
    """Streaming text from streaming token ids; yields only complete characters (vLLM's prefix/read offsets).

    Decoding ids[prefix:] and ids[prefix:read] and emitting the difference handles tokenizers whose decode of a
    token depends on its left neighbour (SentencePiece spaces); holding back text that ends in U+FFFD waits for the
    rest of a UTF-8 character split over byte tokens. A small left context window keeps each step O(1).
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = list(prompt_ids)[-6:]  # a little left context from the prompt, never emitted
        self.read_offset = len(self.ids)
        self.prefix_offset = max(self.read_offset - 5, 0)
        self.text = ""  # everything emitted so far

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def step(self, new_ids: int | Sequence[int]) -> str:
        """Add generated ids; return the newly completed text (possibly "")."""
        self.ids.extend([new_ids] if isinstance(new_ids, int) else new_ids)
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""  # nothing complete yet (an incomplete character, or a token that decodes to nothing)
        delta = new_text[len(prefix_text) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """At the end of generation: whatever is still held back (an incomplete character decodes as U+FFFD)."""
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        delta = new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""
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
    return Tokenizer(tok)
