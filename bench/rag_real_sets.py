"""Answer quality on questions phrased the way people ask (bench/rag_quality.py --sets squad python-docs).

- squad: SQuAD v1.1 dev (../shared/data/squad-v1.1-dev, BEIR layout): the 2,067 paragraphs ingested into a
  collection, a fixed random sample (seeded) of the questions of the articles the bundled model's fine-tuning did
  not read (rag.sft_squad splits the articles in two), scored against the annotators' answers.
- python-docs: bench/data/python_docs_questions.jsonl, natural questions over the demo collection (Python's
  reference topics, retrieval.corpora.python_docs), each with the topic that answers it (null: unanswerable).

Each question goes the server's way: a search of the collection (its default mode, --passages hits), the prompt
rag.prompt.build_prompt renders with the model's own template, greedy decoding through the engine (llm.LLM), free
or quote (rag.pipeline.quote_index: the constraint the server applies). The extractive floor answers with the
sentence of the same numbered passages most similar to the question by the collection's embedder, cited. Extract
answers (the reader) also decline as the server does below the collection's min_similarity (rag.pipeline.off_topic);
the generator rows and the floor answer every question.

Scores (a citation is a [n] in the answer; the answer's text is the answer without them):
- EM, F1: SQuAD's (lower case, no punctuation or articles), best over the gold answers; the no-answer sentence
  counts as an empty answer.
- cited has gold (squad): the first cited passage contains a gold answer; top-1 has gold: retrieval's first
  passage does (what the first citation can reach at best). cite@1 topic / top-1 topic (python-docs): the same
  with the answering topic's document.
- ends: answers that end by themselves (eos), not at max_tokens.
- grounded: the share of the answer's word 4-grams found in the passages it cites (an answer of fewer than 4
  words: the whole of it), over answers other than the no-answer sentence.
- abstain: answers that are the no-answer sentence (python-docs: of the unanswerable questions; false abstain:
  of the answerable ones).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm import LLM, SamplingParams
from rag.answer_scores import exact_match, f1, normalize
from rag.passages import Passage, merge_hits, numbered
from rag.pipeline import extract_answer, off_topic, quote_index
from rag.prompt import NO_ANSWER, build_prompt
from rag.request import DEFAULT_NUM_PASSAGES
from rag.sft_data import read_jsonl
from rag.sft_squad import training_article
from retrieval import Collections

ROOT = Path(__file__).resolve().parent.parent
SQUAD_DIR = ROOT.parent / "shared" / "data" / "squad-v1.1-dev"
PYTHON_DOCS_QUESTIONS = ROOT / "bench" / "data" / "python_docs_questions.jsonl"
_CITE = re.compile(r"\s*\[(\d+)\]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass
class Question:
    text: str
    answers: list[str]  # squad: the gold answers; python-docs: []
    topic: str | None  # python-docs: the answering topic's document id (None: unanswerable); squad: the paragraph


@dataclass
class Answer:
    text: str  # with its citations
    finish_reason: str
    passages: list[Passage]  # the numbered passages of its prompt


# ---- data -------------------------------------------------------------------------------------------------------
def squad(limit: int, seed: int, training: bool = False) -> tuple[list[dict], list[Question]]:
    """All the paragraphs as documents, and `limit` questions sampled with `seed` (the same sample for every run)
    from the articles the bundled models' fine-tuning never read (rag.sft_squad.training_article: half of them);
    training=True: from the other half (for choices that must not tune on the evaluation)."""
    corpus = read_jsonl(SQUAD_DIR / "corpus.jsonl")
    docs = [{"id": d["_id"], "text": d["text"], "source": d["title"]} for d in corpus]
    sampled = {d["_id"] for d in corpus if training_article(d["title"]) == training}
    queries = {q["_id"]: q["text"] for q in read_jsonl(SQUAD_DIR / "queries.jsonl")}
    answers = [a for a in read_jsonl(SQUAD_DIR / "answers.jsonl") if a["doc_id"] in sampled]
    sample = random.Random(seed).sample(answers, min(limit, len(answers)))
    return docs, [Question(queries[a["_id"]], a["answers"], a["doc_id"]) for a in sample]


def python_docs(limit: int) -> tuple[list[dict], list[Question]]:
    from retrieval.corpora import python_docs as corpus

    rows = read_jsonl(PYTHON_DOCS_QUESTIONS)[:limit]
    return list(corpus()), [Question(r["question"], [], f"pydoc-{r['topic']}" if r["topic"] else None) for r in rows]


def collection(data_dir: Path, name: str, docs: list[dict]):
    """The collection `name` under data_dir holding docs, ingested once (reused while it holds them all)."""
    colls = Collections(data_dir)
    if name in colls and colls.get(name).stats()["document_count"] == len(docs):
        return colls, colls.get(name)
    if name in colls:
        colls.delete(name)
    coll = colls.create(name)
    t0 = time.perf_counter()
    for i in range(0, len(docs), 256):
        coll.ingest(docs[i : i + 256])
    print(f"ingested {len(docs)} documents into {name} in {time.perf_counter() - t0:.0f} s")
    return colls, coll


# ---- answering --------------------------------------------------------------------------------------------------
def prompts(llm: LLM, coll, questions: Sequence[Question], num_passages: int, max_tokens: int):
    """Per question: (prompt ids, numbered passages), as the server builds them."""
    tok = llm.engine.tokenizer
    out = []
    for q in questions:
        hits = coll.search(query=q.text, k=num_passages)
        p = build_prompt(tok, [{"role": "user", "content": q.text}], hits, llm.engine.max_model_len, max_tokens)
        out.append((p.token_ids, p.passages))
    return out


def generate(llm: LLM, built, grounding: str, max_tokens: int) -> list[Answer]:
    base = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    params = [
        SamplingParams(temperature=0.0, max_tokens=max_tokens, constraint=quote_index(llm.engine.tokenizer, ps))
        if grounding == "quote"
        else base
        for _, ps in built
    ]
    outs = llm.generate([ids for ids, _ in built], params)
    return [
        Answer(o.outputs[0].text.strip(), o.outputs[0].finish_reason or "stop", ps) for o, (_, ps) in zip(outs, built)
    ]


def extractive(coll, questions: Sequence[Question], built) -> list[Answer]:
    """The floor: the passages' sentence most similar to the question (the collection's embedder), cited."""
    out = []
    for q, (_, passages) in zip(questions, built):
        cands = [(s, p.number) for p in passages for s in _SENTENCE.split(p.text.strip()) if s.strip()]
        if not cands:
            out.append(Answer(NO_ANSWER, "stop", passages))
            continue
        x = coll.embedder.embed([q.text] + [s for s, _ in cands])
        best = int(np.argmax(x[1:] @ x[0]))
        sentence, number = cands[best]
        out.append(Answer(f"{sentence.strip()} [{number}]", "stop", passages))
    return out


def extract(reader, coll, questions: Sequence[Question], num_passages: int) -> list[Answer]:
    """The server's extract answers (rag.pipeline): the reader's best span over every retrieved passage, cited; the
    no-answer sentence below the collection's min_similarity or reader_threshold."""
    out = []
    config = coll.config
    for q in questions:
        found = coll.search(query=q.text, k=num_passages)
        passages = numbered(merge_hits(found.hits))
        if off_topic(found.nearest_score, config.min_similarity):
            out.append(Answer(NO_ANSWER, "stop", passages))
            continue
        out.append(Answer(extract_answer(reader, q.text, passages, config.reader_threshold), "stop", passages))
    return out


# ---- scores -----------------------------------------------------------------------------------------------------
def plain(answer: str) -> str:
    """The answer's text without its citations ('' for the no-answer sentence)."""
    return "" if answer.strip().startswith(NO_ANSWER) else _CITE.sub("", answer).strip()


def cited(answer: Answer) -> list[Passage]:
    by_number = {p.number: p for p in answer.passages}
    numbers = [int(n) for n in _CITE.findall(answer.text)]
    return [by_number[n] for n in dict.fromkeys(numbers) if n in by_number]


def grounded_share(answer: Answer) -> float:
    words = re.findall(r"\w+", plain(answer.text).lower())
    source = " ".join(re.findall(r"\w+", " ".join(p.text for p in cited(answer)).lower()))
    n = min(4, len(words))
    grams = [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    padded = f" {source} "
    return sum(f" {g} " in padded for g in grams) / len(grams)


def score(questions: Sequence[Question], answers: Sequence[Answer], squad_set: bool) -> dict[str, float]:
    n = len(answers)
    said = [a for a in answers if not a.text.startswith(NO_ANSWER)]
    row = {
        "ends": sum(a.finish_reason == "stop" for a in answers) / n,
        "grounded": sum(grounded_share(a) for a in said) / max(len(said), 1),
    }
    if squad_set:
        row["em"] = sum(max(exact_match(plain(a.text), g) for g in q.answers) for q, a in zip(questions, answers)) / n
        row["f1"] = sum(max(f1(plain(a.text), g) for g in q.answers) for q, a in zip(questions, answers)) / n
        row["cited_has_gold"] = (
            sum(
                bool(cited(a)) and any(normalize(g) in normalize(cited(a)[0].text) for g in q.answers)
                for q, a in zip(questions, answers)
            )
            / n
        )
        row["top1_has_gold"] = (
            sum(
                bool(a.passages) and any(normalize(g) in normalize(a.passages[0].text) for g in q.answers)
                for q, a in zip(questions, answers)
            )
            / n
        )
        row["abstain"] = (n - len(said)) / n
        return row
    pairs = [(q, a) for q, a in zip(questions, answers) if q.topic is not None]
    none = [a for q, a in zip(questions, answers) if q.topic is None]
    row["cite1_topic"] = sum(bool(cited(a)) and cited(a)[0].doc_id == q.topic for q, a in pairs) / max(len(pairs), 1)
    row["top1_topic"] = sum(bool(a.passages) and a.passages[0].doc_id == q.topic for q, a in pairs) / max(len(pairs), 1)
    row["abstain"] = sum(a.text.startswith(NO_ANSWER) for a in none) / max(len(none), 1)
    row["false_abstain"] = sum(a.text.startswith(NO_ANSWER) for _, a in pairs) / max(len(pairs), 1)
    return row


SYSTEMS = ("floor", "extract", "free", "quote")


def evaluate(
    name: str,
    model_dirs: Sequence[str],
    data_dir: Path,
    limit: int,
    seed: int,
    num_passages: int = DEFAULT_NUM_PASSAGES,
    max_tokens: int = 96,
    systems: Sequence[str] = SYSTEMS,
    reader_dir: str | None = None,
) -> dict:
    """Rows of one set: the extractive floor and the reader (once), then per model free and quote decoding."""
    docs, questions = squad(limit, seed) if name == "squad" else python_docs(limit)
    colls, coll = collection(data_dir, name, docs)
    rows, samples = [], []
    try:
        runs: list[tuple[str, list[Answer], float]] = []
        if "extract" in systems and reader_dir:
            from rag.reader import Reader

            reader = Reader.load(reader_dir)
            t0 = time.perf_counter()
            runs.append(
                (
                    f"reader {Path(reader_dir).name} (extract)",
                    extract(reader, coll, questions, num_passages),
                    time.perf_counter() - t0,
                )
            )
        for i, model_dir in enumerate(model_dirs if {"floor", "free", "quote"} & set(systems) else ()):
            llm = LLM(model_dir)
            built = prompts(llm, coll, questions, num_passages, max_tokens)
            if i == 0 and "floor" in systems:
                t0 = time.perf_counter()
                runs.insert(0, ("extractive floor", extractive(coll, questions, built), time.perf_counter() - t0))
            for grounding in ("free", "quote"):
                if grounding not in systems:
                    continue
                t0 = time.perf_counter()
                runs.append(
                    (f"{model_dir} {grounding}", generate(llm, built, grounding, max_tokens), time.perf_counter() - t0)
                )
        for label, answers, seconds in runs:
            rows.append(
                {"system": label, **score(questions, answers, name == "squad"), "s_per_q": seconds / len(questions)}
            )
            samples.append({"system": label, "question": questions[0].text, "answer": answers[0].text})
    finally:
        colls.close()
    return {"set": name, "questions": len(questions), "passages": num_passages, "rows": rows, "samples": samples}


def table(result: dict) -> str:
    squad_set = result["set"] == "squad"
    cols = (
        ["em", "f1", "cited_has_gold", "top1_has_gold", "ends", "grounded", "abstain"]
        if squad_set
        else ["cite1_topic", "top1_topic", "ends", "grounded", "abstain", "false_abstain"]
    )
    head = f"| {result['set']} ({result['questions']} questions) | " + " | ".join(cols) + " | s/question |"
    lines = [head, "|---" + "|---:" * (len(cols) + 1) + "|"]
    for r in result["rows"]:
        lines.append(f"| {r['system']} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + f" | {r['s_per_q']:.3f} |")
    return "\n".join(lines)
