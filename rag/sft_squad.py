"""RAG conversations from questions people wrote: SQuAD v1.1 (BEIR layout), split by article.

    python -m rag.sft_squad --squad ../shared/data/squad-v1.1-dev --out out/rag_sft_squad.jsonl --n 3000

rag.sft_data's questions are made from templates; these were written by people reading Wikipedia paragraphs, so
they ask the way people ask (who, when, which, how many, why), with the words of the question scattered over the
answering sentence. Each example is the server's prompt (rag.prompt: SYSTEM_PROMPT, numbered passages, the
question) over the question's paragraph and near-topic distractors (other paragraphs of the same article: what
retrieval hands the model), and the answer quotes the sentence holding the annotated answer, from its last clause
boundary before the answer (a quote may start after `, ; :` in quote decoding too), and cites it. About
none_fraction of the examples drop the answering paragraph (and any other paragraph holding an annotated answer)
and answer NO_ANSWER.

Split by article, as SQuAD's own train/dev split is: only articles for which `training_article(title)` holds are
read here; bench/rag_real_sets evaluates on the other articles only, so no evaluated question, paragraph or article
is seen in fine-tuning. (SQuAD's train set is not on this machine; its dev set is, under ../shared/data.)
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.checks import positive_int
from common.errors import InvalidArgumentError
from rag.passages import Passage, numbered
from rag.prompt import NO_ANSWER, SYSTEM_PROMPT, render_user_turn
from rag.sft_data import read_jsonl, write_cli

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(0-9])")
_CLAUSE = re.compile(r"[,;:]\s+")
MIN_QUOTE_WORDS = 5  # a clause shorter than this reads as a fragment: quote from the sentence's start instead


def training_article(title: str) -> bool:
    """The fixed half of the articles fine-tuning may read (crc32 of the title: stable across runs and machines)."""
    return zlib.crc32(title.encode("utf-8")) % 2 == 0


@dataclass
class SquadSftConfig:
    n: int = 3000  # examples (at most one per question)
    seed: int = 0
    max_distractors: int = 2  # 0..max_distractors other paragraphs of the same article
    none_fraction: float = 0.1
    max_prompt_chars: int = 2000  # as rag.sft_data: drop distractors past this (~2.2 characters per token of
    # Wikipedia text in the small model's BPE: fits `llm.train --seq-len 1024`)

    def validate(self) -> None:
        positive_int(self.n, "n")
        if not 0.0 <= self.none_fraction < 1.0:
            raise InvalidArgumentError(f"none_fraction must be in [0, 1), got {self.none_fraction}")


def answer_quote(paragraph: str, start: int, answer: str) -> str | None:
    """The quote that answers: the sentence of `paragraph` holding paragraph[start:start+len(answer)], from the
    last clause boundary before the answer when that leaves a quote of MIN_QUOTE_WORDS words or more, whitespace
    collapsed. None when the sentence does not end like a sentence (a quote must end one)."""
    bounds = [0] + [m.end() for m in _SENTENCE_END.finditer(paragraph)] + [len(paragraph)]
    lo = max(b for b in bounds if b <= start)
    hi = min(b for b in bounds if b >= start + len(answer))
    sentence = paragraph[lo:hi].strip()
    if not sentence.endswith((".", "!", "?")):
        return None
    cut = 0
    for m in _CLAUSE.finditer(sentence):
        if m.end() <= start - lo and len(sentence[m.end() :].split()) >= MIN_QUOTE_WORDS:
            cut = m.end()
    return " ".join(sentence[cut:].split())


def _passage(doc: dict, score: float) -> Passage:
    return Passage(doc["_id"], 0, score, doc["text"], doc["title"], 0, len(doc["text"]))


def generate(cfg: SquadSftConfig, squad_dir: Path) -> Iterator[dict]:
    """Up to cfg.n records {"messages": [system, user, assistant]} from the training articles, deterministic."""
    cfg.validate()
    docs = {d["_id"]: d for d in read_jsonl(squad_dir / "corpus.jsonl") if training_article(d["title"])}
    queries = {q["_id"]: q["text"] for q in read_jsonl(squad_dir / "queries.jsonl")}
    answers = [a for a in read_jsonl(squad_dir / "answers.jsonl") if a["doc_id"] in docs]
    if not answers:
        raise InvalidArgumentError(f"no questions of training articles under {squad_dir}")
    by_title: dict[str, list[dict]] = {}
    for d in docs.values():
        by_title.setdefault(d["title"], []).append(d)
    rng = random.Random(cfg.seed)
    rng.shuffle(answers)
    made = 0
    for a in answers:
        if made == cfg.n:
            break
        doc = docs[a["doc_id"]]
        quote = answer_quote(doc["text"], a["answer_starts"][0], a["answers"][0])
        if quote is None:
            continue
        question = queries[a["_id"]]
        answerable = rng.random() >= cfg.none_fraction
        golds = {g.lower() for g in a["answers"]}
        near = [d for d in by_title[doc["title"]] if d is not doc and not any(g in d["text"].lower() for g in golds)]
        picked = rng.sample(near, min(len(near), rng.randint(0 if answerable else 1, cfg.max_distractors)))
        if answerable:
            picked.append(doc)
        rng.shuffle(picked)
        while len(picked) > 1 and sum(len(d["text"]) for d in picked) + len(question) > cfg.max_prompt_chars:
            picked.remove(next(d for d in picked if d is not doc))
        if not picked:
            continue
        passages = numbered([_passage(d, 1.0 - 0.01 * i) for i, d in enumerate(picked)])
        reply = f"{quote} [{picked.index(doc) + 1}]" if answerable else NO_ANSWER
        made += 1
        yield {
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": render_user_turn(question, passages)},
                {"role": "assistant", "content": reply},
            ]
        }


def main(argv: list[str] | None = None) -> int:
    defaults = SquadSftConfig()
    p = argparse.ArgumentParser(prog="python -m rag.sft_squad", description=__doc__.splitlines()[0])
    p.add_argument("--squad", required=True, help="SQuAD v1.1 in BEIR layout (corpus, queries, answers .jsonl)")
    p.add_argument("--out", required=True, help="output .jsonl (one {messages: [...]} per line)")
    p.add_argument("--n", type=int, default=defaults.n)
    p.add_argument("--seed", type=int, default=defaults.seed)
    args = p.parse_args(argv)
    return write_cli(args.out, generate(SquadSftConfig(n=args.n, seed=args.seed), Path(args.squad)), args.seed)


if __name__ == "__main__":
    sys.exit(main())
