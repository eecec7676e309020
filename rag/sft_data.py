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

# Question forms, the way people ask (bench/data/python_docs_questions.jsonl has real ones). {h}: a heading as a
# noun phrase ('the "for" statement'); {k}: a statement keyword; {t}: a term quoted in the answering sentence;
# {e}: an exception the answering sentence names; {a}, {b}: two headings.
OVERVIEW_TEMPLATES = (
    "What does the documentation say about {h}?",
    "Explain {h}.",
    "How is {h} used in Python?",
    "Tell me about {h}.",
    "What should I know about {h}?",
    "What is {h}?",
    "Can you explain {h} to me?",
    "I'm new to Python: what is {h}?",
    "Give me a short summary of {h}.",
)
STATEMENT_TEMPLATES = (  # for titles like 'The "for" statement'
    "What does the {k} statement do?",
    "How do I use {k} in Python?",
    "What is the {k} statement for?",
    "When should I use {k}?",
    "how does {k} work",
    "What happens when Python executes a {k} statement?",
)
TERM_TEMPLATES = (
    "What is {t}?",
    "What does {t} do?",
    "How does {t} work?",
    "What happens with {t}?",
    "What does the documentation say about {t}?",
    "How do I use {t}?",
    "Can you tell me what {t} means in {h}?",
    "What is the role of {t} in {h}?",
    "what about {t}",
)
EXCEPTION_TEMPLATES = (
    "Why does {h} raise {e}?",
    "When is {e} raised?",
    "What raises {e} in {h}?",
    "Why do I get a {e}?",
    "In {h}, when do I get {e}?",
)
COMPARE_TEMPLATES = (
    "What is the difference between {a} and {b}?",
    "How do {a} and {b} differ?",
    "Compare {a} and {b}.",
)
# A term worth asking about: quoted ("range()") or emphasised (*iterable*) in the documentation.
_TERM = re.compile(r'"([A-Za-z_][\w.]*(?:\(\))?)"|\*([a-z][a-z -]{2,30})\*')
_EXCEPTION = re.compile(r'"?\b([A-Z]\w*(?:Error|Exception)|StopIteration|KeyboardInterrupt)\b"?')


@dataclass
class RagSftConfig:
    n: int = 3000  # examples to write
    seed: int = 0  # everything (targets, questions, distractors, order) follows from it
    chunk_tokens: int = 200  # word pieces per chunk, as ingestion cuts them; ~850 characters of these docs
    min_chunk_chars: int = 200  # shorter chunks (section tails) are neither targets nor distractors
    max_distractors: int = 4  # 1..max_distractors passages that do not answer, per example
    none_fraction: float = 0.1  # share of examples with only unrelated passages (answer: NO_ANSWER)
    # Shares of the answerable examples by kind; the rest ask about the chunk's subject (answer: its first
    # sentences). term: about a term of a later sentence (answer: that sentence); exception: why/when an exception
    # is raised; compare: the difference between two topics (answer: one quote of each, each cited).
    term_fraction: float = 0.35
    exception_fraction: float = 0.1
    compare_fraction: float = 0.08
    near_fraction: float = 0.5  # distractors taken from the target's own topic (close, but not the answer)
    casual_fraction: float = 0.15  # questions typed casually: lower case, no question mark
    # Drop distractors past this many characters of passages + question: ~1,000 tokens of the small model's BPE
    # (~2.7 characters per token on these docs), so an example fits `llm.train --seq-len 1024`.
    max_prompt_chars: int = 2700

    def validate(self) -> None:
        positive_int(self.n, "n")
        positive_int(self.max_distractors, "max_distractors")
        if positive_int(self.chunk_tokens, "chunk_tokens") < 16:
            raise InvalidArgumentError(f"chunk_tokens must be at least 16, got {self.chunk_tokens}")
        for name in ("none_fraction", "near_fraction", "casual_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise InvalidArgumentError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        kinds = self.term_fraction + self.exception_fraction + self.compare_fraction
        if min(self.term_fraction, self.exception_fraction, self.compare_fraction) < 0 or kinds > 1.0:
            raise InvalidArgumentError("term, exception and compare fractions must be >= 0 and sum to <= 1")


@dataclass
class TopicChunk:
    topic: str  # pydoc_data.topics key, e.g. "for"
    heading: str  # the closest heading at or before the chunk, e.g. 'The "for" statement'
    chunk_id: int  # position within the topic
    chunk: Chunk
    answer: str | None  # the first one or two prose sentences (whitespace collapsed); None: no prose in it
    sentences: list[str]  # every prose sentence, whitespace collapsed, in order


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


def _prose_paragraphs(text: str) -> Iterator[str]:
    """Prose paragraphs of text, whitespace collapsed: no headings, their underlines, indented blocks (grammar,
    code, tables) or list items."""
    for para in re.split(r"\n\s*\n", text):
        lines = para.strip("\n").splitlines()
        if not lines or lines[0].startswith((" ", "\t", "*", "-", "+", ">>>")) or "::=" in para:
            continue
        if any(_UNDERLINE.match(line.strip()) for line in lines):
            continue  # a heading
        # A term and its indented definition ("Direct Call\n   The simplest...") is not one run of prose.
        lines = lines[: next((i for i, line in enumerate(lines) if line[:1].isspace()), len(lines))]
        yield " ".join(" ".join(lines).split())


def _whole(sentence: str) -> bool:
    # not a cut-off fragment, a label, or a lead-in to a block ("...as follows:")
    return sentence.endswith((".", "!", "?")) and len(sentence) >= 30


def prose_sentences(text: str, max_chars: int = 320) -> list[str]:
    """Every whole prose sentence of text (see _prose_paragraphs), at most max_chars long, in order."""
    return [
        s for para in _prose_paragraphs(text) for s in _SENTENCE_END.split(para) if _whole(s) and len(s) <= max_chars
    ]


def first_sentences(text: str, max_chars: int = 320) -> str | None:
    """The first prose sentence of text (two when the first is short), whitespace collapsed: skips headings,
    their underlines, indented blocks (grammar, code, tables) and list items. None when there is no prose."""
    for prose in _prose_paragraphs(text):
        sentences = _SENTENCE_END.split(prose)
        if not _whole(sentences[0]):
            continue
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
            out.append(TopicChunk(key, heading, i, c, first_sentences(c.text), prose_sentences(c.text)))
    return out


def _flat(text: str) -> str:
    return " ".join(text.split())


def _phrase(heading: str) -> str:
    """A heading as a noun phrase inside a question: 'The "for" statement' -> 'the "for" statement'."""
    return heading[0].lower() + heading[1:] if heading.startswith(("The ", "A ", "An ")) else heading


def _casual(question: str, rng: random.Random, fraction: float) -> str:
    """Sometimes the question as people type it into a chat box: lower case first letter, no question mark."""
    if rng.random() >= fraction:
        return question
    return (question[0].lower() + question[1:]).rstrip("?.").strip()


def make_question(t: TopicChunk, rng: random.Random) -> str:
    """A question about the chunk's subject (its heading), answered by its first sentences."""
    options = [tpl.format(h=_phrase(t.heading)) for tpl in OVERVIEW_TEMPLATES]
    if m := re.fullmatch(r'The "(\w+)" statement', t.heading):
        options += [tpl.format(k=m.group(1)) for tpl in STATEMENT_TEMPLATES]
    if t.answer and (m := _SUBJECT.match(t.answer)):
        options.append(f"What is {_phrase(m.group(1))}?")
    return rng.choice(options)


def _answer_with_next(t: TopicChunk, i: int) -> str:
    """Sentence i, with the next one when sentence i is short and the next follows it: an answer that spans
    sentences."""
    if len(t.sentences[i]) < 100 and i + 1 < len(t.sentences):
        both = f"{t.sentences[i]} {t.sentences[i + 1]}"
        if both in _flat(t.chunk.text):
            return both
    return t.sentences[i]


def term_question(t: TopicChunk, rng: random.Random) -> tuple[str, str, str] | None:
    """(question, answer, term) about a term of one of the chunk's sentences; None when none has a term."""
    picks = [(i, m.group(1) or m.group(2)) for i, s in enumerate(t.sentences) for m in _TERM.finditer(s)]
    picks = [(i, term) for i, term in picks if term.lower() not in t.heading.lower()]
    if not picks:
        return None
    i, term = rng.choice(picks)
    shown = f'"{term}"' if rng.random() < 0.5 and term[0].isalpha() and not term.islower() else term
    question = rng.choice(TERM_TEMPLATES).format(t=shown, h=_phrase(t.heading))
    return question, _answer_with_next(t, i), term


def exception_question(t: TopicChunk, rng: random.Random) -> tuple[str, str, str] | None:
    picks = [(i, m.group(1)) for i, s in enumerate(t.sentences) for m in _EXCEPTION.finditer(s)]
    if not picks:
        return None
    i, exc = rng.choice(picks)
    return rng.choice(EXCEPTION_TEMPLATES).format(e=exc, h=_phrase(t.heading)), t.sentences[i], exc


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


def _cite(answers: list[str], targets: list[TopicChunk], picked: list[TopicChunk]) -> str:
    """Each target's answer followed by the marker of the passage it is shown as."""
    return " ".join(f"{a} [{picked.index(t) + 1}]" for a, t in zip(answers, targets))


def generate(cfg: RagSftConfig, chunks: list[TopicChunk] | None = None) -> Iterator[dict]:
    """cfg.n records {"messages": [system, user, assistant]}, deterministic for cfg.seed.

    Distractors never contain the answer: near ones come from the target's own topic (close in subject, the
    hard case retrieval hands the model) and must not mention the question's term; far ones come from other
    topics. An unanswerable example keeps the question and drops its target (and any chunk with its term)."""
    cfg.validate()
    chunks = chunks if chunks is not None else topic_chunks(cfg)
    targets = [t for t in chunks if t.answer]
    if not targets or len({t.topic for t in chunks}) < 2:
        raise InvalidArgumentError("need chunks with prose from at least two topics")
    by_topic: dict[str, list[TopicChunk]] = {}
    for t in chunks:
        by_topic.setdefault(t.topic, []).append(t)
    rng = random.Random(cfg.seed)
    for _ in range(cfg.n):
        target = rng.choice(targets)
        kind, r = "overview", rng.random()
        made = None
        if r < cfg.term_fraction:
            made, kind = term_question(target, rng), "term"
        elif r < cfg.term_fraction + cfg.exception_fraction:
            made, kind = exception_question(target, rng), "exception"
        elif r < cfg.term_fraction + cfg.exception_fraction + cfg.compare_fraction:
            kind = "compare"
        if kind in ("term", "exception") and made is None:
            kind = "overview"
        answerable = rng.random() >= cfg.none_fraction
        chosen = [target]
        if kind == "overview":
            question, answers, key = make_question(target, rng), [target.answer], target.answer
        elif kind == "compare":
            other = rng.choice([t for t in targets if t.topic != target.topic and t.heading != target.heading])
            chosen = [target, other]
            a, b = _phrase(target.heading), _phrase(other.heading)
            question = rng.choice(COMPARE_TEMPLATES).format(a=a, b=b)
            answers, key = [target.answer, other.answer], target.answer
        else:
            question, answer, key = made
            answers = [answer]
        question = _casual(question, rng, cfg.casual_fraction)
        # Distractors: other chunks of the target's topic that do not hold the key (near), or other topics (far).
        # ... never one that repeats the answer or the target's section ("elif" is the "if" topic).
        far = [t for t in chunks if t.topic not in {c.topic for c in chosen}]
        near = [
            t
            for t in by_topic[target.topic]
            if t is not target and key not in _flat(t.chunk.text)  # (key is flat: raw text holding it, flat does too)
        ]
        picked: list[TopicChunk] = []
        for _ in range(rng.randint(1, cfg.max_distractors)):
            pool = near if near and rng.random() < cfg.near_fraction else far
            d = rng.choice(pool)
            if d not in picked and all(
                d.heading != c.heading and (c.answer or "") not in _flat(d.chunk.text) for c in chosen
            ):
                picked.append(d)
        if not answerable and kind == "compare":
            answerable = True  # a comparison with one side missing is not a clean "no answer"; keep it answerable
        if not picked and not answerable:
            picked = [next(t for t in far if t.heading != target.heading)]
        if answerable:
            picked.extend(chosen)
        rng.shuffle(picked)
        # Stay within the window budget: drop distractors (never a target) while the prompt is too long.
        while (
            len(picked) > len(chosen) * answerable
            and sum(len(t.chunk.text) for t in picked) + len(SYSTEM_PROMPT) + len(question) > cfg.max_prompt_chars
        ):
            picked.remove(next(t for t in picked if t not in chosen or not answerable))
        passages = numbered([_passage(t, 1.0 - 0.01 * i) for i, t in enumerate(picked)])  # as build_prompt does
        yield {
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": render_user_turn(question, passages)},
                {"role": "assistant", "content": _cite(answers, chosen, picked) if answerable else NO_ANSWER},
            ]
        }


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a .jsonl file (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


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
    return write_cli(args.out, generate(cfg), cfg.seed)


def write_cli(out: str, records: Iterator[dict], seed: int) -> int:
    """A data CLI's end: write the records, print {"out", "examples", "seed"} (exit 0) or the error (exit 2)."""
    try:
        n = write_jsonl(out, records)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": out, "examples": n, "seed": seed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
