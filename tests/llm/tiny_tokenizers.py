"""Tiny Hugging Face tokenizers of the two kinds checkpoints ship, built in the tests (nothing committed), and the
chat templates of real checkpoints: ChatML (Qwen2-Instruct) and Mixtral-Instruct's [INST] template.

- byte_level_bpe: GPT-2 / Llama-3 / Qwen style (ByteLevel pre-tokenizer and decoder; any UTF-8 round-trips);
- metaspace_bpe: Llama-2 / Mistral / Mixtral style SentencePiece BPE with byte fallback (<0x00>..<0xFF> pieces in
  the vocabulary, a Replace/ByteFallback/Fuse/Strip decoder), with the "legacy" normalizer (Prepend + Replace) or
  the Metaspace pre-tokenizer (prepend_scheme "first") that newer conversions write.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

CORPUS = [
    "Retrieval-augmented generation grounds the answer in the retrieved passages [1].",
    "Product quantization splits a vector into sub-vectors; each has its own codebook.",
    "Volcanoes erupt when magma rises through the crust. Sourdough bread rises thanks to wild yeast.",
    "Café, naïve façade, jalapeño and smörgåsbord keep their accents.",
    "東京は日本の首都です。検索拡張生成。",
    "Context: Question: Answer: cite passages like [1] and [2]. You answer questions about the documents.",
    "[INST] What is this? [/INST] It is an answer.",
]

# Qwen2-Instruct's template (ChatML; a default system turn when the conversation has none).
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Mixtral-8x7B-Instruct-v0.1's template: no system role, roles must alternate.
MIXTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


def _added(specials: list[str]) -> list[dict[str, Any]]:
    return [
        dict(id=i, content=s, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
        for i, s in enumerate(specials)
    ]


def byte_level_bpe(specials: list[str], vocab_size: int = 400, texts: list[str] = CORPUS) -> HFTokenizer:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts * 5, trainer=trainer)
    return tok


def metaspace_bpe(
    specials: list[str], vocab_size: int = 420, legacy: bool = True, texts: list[str] = CORPUS
) -> HFTokenizer:
    trainer_tok = HFTokenizer(models.BPE(unk_token=specials[0]))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False, limit_alphabet=60
    )
    trainer_tok.train_from_iterator(texts * 5, trainer=trainer)
    spec = json.loads(trainer_tok.to_str())
    vocab = {s: i for i, s in enumerate(specials)}  # specials, then the 256 byte pieces, then the learned pieces
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    spec["model"].update(vocab=vocab, byte_fallback=True, fuse_unk=True, unk_token=specials[0])
    spec["added_tokens"] = _added(specials)
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    if legacy:  # Llama-2 / Mixtral v0.1 conversions
        spec["normalizer"] = {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            ],
        }
        spec["pre_tokenizer"] = None
    else:
        spec["normalizer"] = None
        spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    return HFTokenizer.from_str(json.dumps(spec))


def write(directory: Path, tok: HFTokenizer, chat_template: str | None = None, **specials: str) -> Path:
    """tokenizer.json + tokenizer_config.json as a checkpoint ships them."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(tok.to_str())
    cfg: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    cfg.update(specials)
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg))
    return directory


def chatml(directory: Path) -> Path:
    """A Qwen2-Instruct-like tokenizer: byte-level BPE, ChatML specials, eos <|im_end|>."""
    tok = byte_level_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    return write(directory, tok, CHATML_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def mixtral_instruct(directory: Path, legacy: bool = True) -> Path:
    """A Mixtral-Instruct-like tokenizer: Metaspace BPE with byte fallback, <unk> <s> </s>, the [INST] template."""
    tok = metaspace_bpe(["<unk>", "<s>", "</s>"], legacy=legacy)
    return write(directory, tok, MIXTRAL_TEMPLATE, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
