"""Calibrate the extractive reader's no-answer threshold for one collection, on a few of its own questions.

    python -m rag.calibrate_reader --data-dir DIR --collection NAME --questions Q.jsonl [--reader DIR] [--write]
        [--json]

Why: the reader (rag/reader.py) answers when some retrieved passage's margin (best span score - no-answer score)
reaches a threshold. Its trainer chose that threshold on its training data (mostly SQuAD's Wikipedia paragraphs),
and margins shift with the kind of text and of question: on the Python docs, natural questions score about 2 lower
than SQuAD's, so the reader's own threshold declines half of the questions the docs answer. A few tens of the
collection's own questions, each marked answerable or not, are enough to place the threshold for it.

Q.jsonl rows: {"question": "...", "answerable": true | false}, or {"question": "...", "topic": "doc id" | null}
(bench/data/python_docs_dev_questions.jsonl's form: a null topic is unanswerable; a topic also reports how often the
passage quoted is that document). Each question goes the server's way (the collection's default search, the
server's passage count, merged as rag.pipeline merges them); the threshold chosen maximises the right decisions,
answering the answerable and declining the rest (each as a share of its kind). It is printed with the decisions
before and after; --write also stores it as the collection's reader_threshold (CollectionConfig.reader_threshold,
through Collections.update), which a server started on the data dir then uses. It opens the data dir itself, so it
runs while no server holds that directory; for a server that keeps running, calibrate on a copy of the directory and
set the threshold with `pqrag collections update NAME --reader-threshold X`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import InvalidArgumentError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_READER = ROOT / "models" / "pqrag-reader"


@dataclass(frozen=True)
class LabelledQuestion:
    text: str
    answerable: bool
    topic: str | None = None  # the document that answers it, when known


@dataclass(frozen=True)
class Scored:
    question: LabelledQuestion
    best_margin: float  # the best margin of any passage (what the threshold is compared with)
    margins: tuple[float, ...]  # per passage, in retrieval order
    doc_ids: tuple[str, ...]


def read_questions(path: str | Path) -> list[LabelledQuestion]:
    """Q.jsonl's rows; a row without a question, or with neither "answerable" nor "topic", is an error naming it."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidArgumentError(f"{path}:{n}: not JSON ({exc.msg})") from None
            text = row.get("question") if isinstance(row, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise InvalidArgumentError(f'{path}:{n}: needs a "question" string')
            if isinstance(row.get("answerable"), bool):
                out.append(LabelledQuestion(text, row["answerable"], row.get("topic")))
            elif "topic" in row and (row["topic"] is None or isinstance(row["topic"], str)):
                topic = row["topic"]
                out.append(LabelledQuestion(text, topic is not None, topic))
            else:
                raise InvalidArgumentError(f'{path}:{n}: needs "answerable": true/false or "topic": "doc id"/null')
    if not out:
        raise InvalidArgumentError(f"{path}: no questions")
    return out


def decided(answerable: Sequence[float], unanswerable: Sequence[float], threshold: float) -> tuple[int, int]:
    """(answerable questions answered, unanswerable ones declined) at threshold, from their best margins."""
    return sum(m >= threshold for m in answerable), sum(not m >= threshold for m in unanswerable)


def choose_threshold(answerable: Sequence[float], unanswerable: Sequence[float]) -> float:
    """The threshold over best margins that decides best: the most answered of the answerable (margin >= threshold)
    plus declined of the unanswerable (below it), each as a share of its kind, so that the mix of the questions
    (often few unanswerable ones) does not decide. Candidates lie halfway between neighbouring margins (and one unit
    beyond the ends); of equally good ones, the one farthest from any margin, so that a small shift of the margins
    keeps the decisions."""
    finite = sorted({m for m in (*answerable, *unanswerable) if math.isfinite(m)})
    if not finite:
        return 0.0
    cands = [finite[0] - 1.0, *((a + b) / 2 for a, b in zip(finite, finite[1:])), finite[-1] + 1.0]

    def right(th: float) -> float:
        said, declined = decided(answerable, unanswerable, th)
        return said / max(len(answerable), 1) + declined / max(len(unanswerable), 1)

    def room(th: float) -> float:
        return min(abs(th - m) for m in finite)

    return max(cands, key=lambda th: (round(right(th), 9), room(th)))


def decisions(scored: Sequence[Scored], threshold: float, rank_penalty: float) -> dict:
    """How a threshold decides the questions: answered (of the answerable), declined (of the others), the share of
    right decisions, and (where topics are known) how often the passage quoted is the topic's document."""
    from rag.reader import choose_passage

    ans = [s for s in scored if s.question.answerable]
    none = [s for s in scored if not s.question.answerable]
    said, declined = decided([s.best_margin for s in ans], [s.best_margin for s in none], threshold)
    topical = [s for s in ans if s.question.topic is not None]
    row = {
        "threshold": round(threshold, 4),
        "answered": said / max(len(ans), 1),
        "declined": declined / max(len(none), 1),
        "right": (said + declined) / len(scored),
    }
    if topical:
        row["quoted_topic"] = sum(
            s.best_margin >= threshold and s.doc_ids[choose_passage(s.margins, rank_penalty)] == s.question.topic
            for s in topical
        ) / len(topical)
    return row


def score_questions(reader, coll, questions: Sequence[LabelledQuestion], num_passages: int, progress: bool = True):
    """Each question searched as the server searches (the collection's default mode) and read."""
    from tqdm import tqdm

    from rag.passages import merge_hits, numbered

    out = []
    for q in tqdm(questions, desc="reading", unit="question", disable=not progress):
        passages = numbered(merge_hits(coll.search(query=q.text, k=num_passages).hits))
        margins = tuple(m for m, _ in reader.scores(q.text, [p.text for p in passages]))
        best = max(margins, default=-math.inf)
        out.append(Scored(q, best, margins, tuple(p.doc_id for p in passages)))
    return out


def calibrate(reader, coll, questions: Sequence[LabelledQuestion], num_passages: int, progress: bool = True) -> dict:
    """The collection's threshold for `reader` and the decisions at the reader's own threshold and at it."""
    scored = score_questions(reader, coll, questions, num_passages, progress)
    answerable = [s.best_margin for s in scored if s.question.answerable]
    unanswerable = [s.best_margin for s in scored if not s.question.answerable]
    threshold = choose_threshold(answerable, unanswerable)
    return {
        "questions": len(scored),
        "answerable": len(answerable),
        "reader_threshold": round(threshold, 4),
        "before": decisions(scored, reader.cfg.null_threshold, reader.cfg.rank_penalty),
        "after": decisions(scored, threshold, reader.cfg.rank_penalty),
    }


def main(argv: list[str] | None = None) -> int:
    from rag.request import DEFAULT_NUM_PASSAGES

    p = argparse.ArgumentParser(prog="python -m rag.calibrate_reader", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="the server's data dir (no server may hold it meanwhile)")
    p.add_argument("--collection", required=True)
    p.add_argument("--questions", required=True, help="JSONL: question + answerable (or topic: doc id / null)")
    p.add_argument("--reader", default=str(DEFAULT_READER), help="the reader's directory (default: the bundled one)")
    p.add_argument("--passages", type=int, default=DEFAULT_NUM_PASSAGES, help="passages per question (the server's)")
    p.add_argument(
        "--write", action="store_true", help="store the calibrated threshold as the collection's reader_threshold"
    )
    p.add_argument("--json", action="store_true", help="one JSON object on stdout (with written: true after --write)")
    args = p.parse_args(argv)

    from rag.reader import Reader
    from retrieval import Collections

    try:
        questions = read_questions(args.questions)
    except (OSError, InvalidArgumentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    reader = Reader.load(args.reader)
    colls = Collections(args.data_dir)
    try:
        result = calibrate(reader, colls.get(args.collection), questions, args.passages, progress=not args.json)
        if args.write:  # committed to the store; a server reads it when it next opens the data dir
            colls.update(args.collection, reader_threshold=result["reader_threshold"])
    finally:
        colls.close()
    result["written"] = args.write
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['questions']} questions ({result['answerable']} answerable) over {args.collection}")
    for name in ("before", "after"):
        r = result[name]
        topic = f", quoted the topic {r['quoted_topic']:.2f}" if "quoted_topic" in r else ""
        print(
            f"  threshold {r['threshold']:+.3f} ({'the reader' if name == 'before' else 'calibrated'}): answered "
            f"{r['answered']:.2f} of the answerable, declined {r['declined']:.2f} of the rest, right "
            f"{r['right']:.2f}{topic}"
        )
    threshold = result["reader_threshold"]
    if args.write:
        print(f"wrote reader_threshold {threshold} to collection {args.collection} in {args.data_dir}")
    else:
        print(
            f"set it: pqrag collections update {args.collection} --reader-threshold {threshold} (on a running "
            "server), or run this again with --write (no server holding the data dir)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
