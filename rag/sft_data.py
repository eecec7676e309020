"""Synthetic RAG conversations for supervised fine-tuning: teach the generator the server's chat format.

    python -m rag.sft_data --out out/rag_sft.jsonl --n 3000 --seed 0
    python -m llm.train --init-from out/pqrag-small --data out/rag_sft.jsonl --out out/pqrag-small-sft ...

A model pretrained on raw text never saw the prompt the RAG server builds (rag.prompt: SYSTEM_PROMPT, then a
user turn of numbered passages and the question). Each example here is exactly that prompt, built with the same
functions (render_user_turn, numbered Passages), over chunks of Python's reference topics (pydoc_data.topics, the demo's
corpus, with the same `source` labels as retrieval.corpora.python_docs), and an answer that copies the first one
or two sentences of the relevant passage and cites it: `... [2]`. About none_fraction of the examples hold only
unrelated passages and answer NO_ANSWER, so the model learns to say so instead of copying a wrong passage.

Chunks come from retrieval.chunker with the embedder's own word-piece tokenizer (only its tokenizer.json is
read: no model load), like ingestion, but shorter than ingestion's 200 pieces, and the prompt is capped, so that
an example fits one 512-token training sequence (mean ~380 tokens of the small model's BPE, 99.6% <= 512; the
trainer starts each on a sequence boundary). Chunks do not overlap, so a distractor never contains the answer.
Output: one {"messages": [system, user, assistant]} per line, deterministic for a seed; llm.train.corpus reads such
records through the chat template.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from common.checks import positive_int
from common.errors import InvalidArgumentError
from rag.passages import Passage, numbered
from rag.prompt import NO_ANSWER, SYSTEM_PROMPT, render_user_turn
from retrieval.chunker import Chunk, Chunker, ChunkerConfig

# A reStructuredText-style heading: a title line underlined with * = - ~ ^ (pydoc topics use * and =).
_HEADING = re.compile(r"^(\S[^\n]*)\n([*=\-~^])\2{3,}[ \t]*$", re.MULTILINE)
_UNDERLINE = re.compile(r"^([*=\-~^])\1{3,}$")
# A sentence ends at . ! ? followed by whitespace and an upper-case letter, a quote or a bracket.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(*])")
_SUBJECT = re.compile(r"^((?:The |An? )?[\w\"'*-]+(?: [\w\"'*-]+){0,4}) (?:is|are) ")

QUESTION_TEMPLATES = (
    "What does the documentation say about {h}?",
    "Explain {h}.",
    "How is {h} used in Python?",
    "Tell me about {h}.",
    "What should I know about {h}?",
)
STATEMENT_TEMPLATES = (  # for titles like 'The "for" statement'
    "What does the {k} statement do?",
    "How do I use {k} in Python?",
    "What is the {k} statement for?",
)


@dataclass
class RagSftConfig:
    n: int = 3000  # examples to write
    seed: int = 0  # everything (targets, questions, distractors, order) follows from it
    chunk_tokens: int = 128  # word pieces per chunk (ingestion: 200); ~550 characters of these docs
    min_chunk_chars: int = 200  # shorter chunks (section tails) are neither targets nor distractors
    max_distractors: int = 3  # 1..max_distractors unrelated passages per example
    none_fraction: float = 0.1  # share of examples with only unrelated passages (answer: NO_ANSWER)
    # Drop distractors past this many characters of passages + question: ~480 tokens of the small model's BPE
    # (~2.7 characters per token on these docs), so an example fits `llm.train --seq-len 512`.
    max_prompt_chars: int = 1300

    def validate(self) -> None:
        positive_int(self.n, "n")
        positive_int(self.max_distractors, "max_distractors")
        if positive_int(self.chunk_tokens, "chunk_tokens") < 16:
            raise InvalidArgumentError(f"chunk_tokens must be at least 16, got {self.chunk_tokens}")
        if not 0.0 <= self.none_fraction < 1.0:
            raise InvalidArgumentError(f"none_fraction must be in [0, 1), got {self.none_fraction}")


@dataclass
class TopicChunk:
    topic: str  # pydoc_data.topics key, e.g. "for"
    heading: str  # the closest heading at or before the chunk, e.g. 'The "for" statement'
    chunk_id: int  # position within the topic
    chunk: Chunk
    answer: str | None  # the first one or two prose sentences (whitespace collapsed); None: no prose in it


def word_piece_offsets() -> Callable[[str], np.ndarray]:
    """(n, 2) character spans of the default embedder's word pieces (what ingestion chunks with), from its
    tokenizer.json alone; whitespace-separated words when the embedder package is missing."""
    try:
        from tokenizers import Tokenizer

        from retrieval.embedder import default_model_path

        tok = Tokenizer.from_file(os.path.join(default_model_path(), "tokenizer.json"))
        tok.no_truncation()
        tok.no_padding()
        return lambda text: np.asarray(tok.encode(text, add_special_tokens=False).offsets, dtype=np.int64)
    except Exception:  # noqa: BLE001 - any failure to load: fall back to words (~1.3 word pieces each)
        return lambda text: np.asarray([m.span() for m in re.finditer(r"\S+", text)], dtype=np.int64)


def first_sentences(text: str, max_chars: int = 320) -> str | None:
    """The first prose sentence of text (two when the first is short), whitespace collapsed: skips headings,
    their underlines, indented blocks (grammar, code, tables) and list items. None when there is no prose."""
    for para in re.split(r"\n\s*\n", text):
        lines = para.strip("\n").splitlines()
        if not lines or lines[0].startswith((" ", "\t", "*", "-", "+", ">>>")) or "::=" in para:
            continue
        if any(_UNDERLINE.match(line.strip()) for line in lines):
            continue  # a heading
        prose = " ".join(" ".join(lines).split())
        sentences = _SENTENCE_END.split(prose)
        if not sentences[0].endswith((".", "!", "?")) or len(sentences[0]) < 30:
            continue  # a cut-off fragment, a label, or a lead-in to a block ("...as follows:"), not an answer
        answer = sentences[0]
        if len(answer) < 100 and len(sentences) > 1 and sentences[1].endswith((".", "!", "?")):
            answer = f"{answer} {sentences[1]}"
        if len(answer) > max_chars:
            continue
        return answer
    return None


def topic_chunks(cfg: RagSftConfig, topics: dict[str, str] | None = None) -> list[TopicChunk]:
    """Non-overlapping chunks of every topic (sorted by key), each with its heading and answer sentences."""
    if topics is None:
        from pydoc_data.topics import topics
    chunker = Chunker(ChunkerConfig(chunk_tokens=cfg.chunk_tokens, overlap_tokens=0), word_piece_offsets())
    out = []
    for key in sorted(topics):
        text = topics[key].strip()  # stripped like retrieval.corpora.python_docs, so spans match ingestion's
        headings = [(m.start(), m.group(1).strip()) for m in _HEADING.finditer(text)]
        for i, c in enumerate(chunker.chunk(text)):
            if len(c.text) < cfg.min_chunk_chars:
                continue
            # The heading the chunk is under: the last one starting before the chunk's first prose.
            heading = next((h for pos, h in reversed(headings) if pos < c.start + 40), key)
            out.append(TopicChunk(key, heading, i, c, first_sentences(c.text)))
    return out


def _flat(text: str) -> str:
    return " ".join(text.split())


def _phrase(heading: str) -> str:
    """A heading as a noun phrase inside a question: 'The "for" statement' -> 'the "for" statement'."""
    return heading[0].lower() + heading[1:] if heading.startswith(("The ", "A ", "An ")) else heading


def make_question(t: TopicChunk, rng: random.Random) -> str:
    options = [tpl.format(h=_phrase(t.heading)) for tpl in QUESTION_TEMPLATES]
    if m := re.fullmatch(r'The "(\w+)" statement', t.heading):
        options += [tpl.format(k=m.group(1)) for tpl in STATEMENT_TEMPLATES]
    if t.answer and (m := _SUBJECT.match(t.answer)):
        options.append(f"What is {_phrase(m.group(1))}?")
    return rng.choice(options)


def _passage(t: TopicChunk, score: float) -> Passage:
    # The fields a served passage has for the demo collection (retrieval.corpora.python_docs ids and sources).
    return Passage(
        doc_id=f"pydoc-{t.topic}",
        chunk_id=t.chunk_id,
        score=score,
        text=t.chunk.text,
        source=f"pydoc_data/topics.py#{t.topic}",
        start=t.chunk.start,
        end=t.chunk.end,
    )


def generate(cfg: RagSftConfig, chunks: list[TopicChunk] | None = None) -> Iterator[dict]:
    """cfg.n records {"messages": [system, user, assistant]}, deterministic for cfg.seed."""
    cfg.validate()
    chunks = chunks if chunks is not None else topic_chunks(cfg)
    targets = [t for t in chunks if t.answer]
    if not targets or len({t.topic for t in chunks}) < 2:
        raise InvalidArgumentError("need chunks with prose from at least two topics")
    rng = random.Random(cfg.seed)
    for _ in range(cfg.n):
        target = rng.choice(targets)
        question = make_question(target, rng)
        answerable = rng.random() >= cfg.none_fraction
        others = [t for t in chunks if t.topic != target.topic]  # other topics cannot answer (or contradict) it
        picked = rng.sample(others, min(rng.randint(1, cfg.max_distractors), len(others)))
        # ... except the few topics that repeat another's section ("elif" is the "if" topic): drop those.
        picked = [t for t in picked if t.heading != target.heading and target.answer not in _flat(t.chunk.text)]
        if not picked and not answerable:
            picked = [next(t for t in others if t.heading != target.heading)]
        if answerable:
            picked.append(target)
        rng.shuffle(picked)
        # Stay within the window budget: drop distractors (never the target) while the prompt is too long.
        while (
            len(picked) > 1
            and sum(len(t.chunk.text) for t in picked) + len(SYSTEM_PROMPT) + len(question) > cfg.max_prompt_chars
        ):
            picked.remove(next(t for t in picked if t is not target))
        passages = numbered([_passage(t, 1.0 - 0.01 * i) for i, t in enumerate(picked)])  # as build_prompt does
        if answerable:
            answer = f"{target.answer} [{picked.index(target) + 1}]"
        else:
            answer = NO_ANSWER
        yield {
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": render_user_turn(question, passages)},
                {"role": "assistant", "content": answer},
            ]
        }


def write_jsonl(path: str, records: Iterator[dict]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    defaults = RagSftConfig()
    p = argparse.ArgumentParser(prog="python -m rag.sft_data", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output .jsonl (one {messages: [...]} per line)")
    p.add_argument("--n", type=int, default=defaults.n, help=f"examples (default {defaults.n})")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--chunk-tokens", dest="chunk_tokens", type=int, default=defaults.chunk_tokens)
    p.add_argument("--none-fraction", dest="none_fraction", type=float, default=defaults.none_fraction)
    args = p.parse_args(argv)
    cfg = RagSftConfig(n=args.n, seed=args.seed, chunk_tokens=args.chunk_tokens, none_fraction=args.none_fraction)
    try:
        n = write_jsonl(args.out, generate(cfg))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": args.out, "examples": n, "seed": cfg.seed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
