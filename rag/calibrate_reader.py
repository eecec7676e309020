"""Calibrate when a collection's RAG answers decline, on a few of its own questions: the reader's no-answer
threshold and the similarity cut.

    python -m rag.calibrate_reader --data-dir DIR --collection NAME --questions Q.jsonl [--reader DIR] [--write]
        [--json]

Why: the reader (rag/reader.py) answers when some retrieved passage's margin (best span score - no-answer score)
reaches a threshold. Its trainer chose that threshold on its training data (mostly SQuAD's Wikipedia paragraphs),
and margins shift with the kind of text and of question: on the Python docs they separate the questions the docs
answer from the others poorly (a threshold that declines most of the others declines a third of the answerable
ones). How close the collection's nearest chunk is to the question (its dense score) separates them far better
there: "who founded Microsoft?" is far from every chunk of the docs, "what does str.join do?" is not. So two
settings decide, chosen together: the collection's min_similarity (below it a question is declined before any
reading: rag.pipeline.off_topic) and its reader_threshold (for the questions that pass the cut).

Q.jsonl rows: {"question": "...", "answerable": true | false}, or {"question": "...", "topic": "doc id" | null}
(bench/data/python_docs_dev_questions.jsonl's form: a null topic is unanswerable; a topic also reports how often the
passage quoted is that document). Each question goes the server's way (the collection's default search, the
server's passage count, merged as rag.pipeline merges them); the settings chosen maximise the right decisions,
answering the answerable and declining the rest (each as a share of its kind), with no cut where a cut does not
help. They are printed with the decisions of the collection's current settings and of the new ones; --write also
stores them in the collection (CollectionConfig.reader_threshold and min_similarity, through Collections.update),
which a server started on the data dir then uses. It opens the data dir itself, so it runs while no server holds
that directory; for a server that keeps running, calibrate on a copy of the directory and set them with `pqrag
collections update NAME --reader-threshold X --min-similarity Y`.
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
    similarity: float | None = None  # its search's nearest chunk's dense score (SearchResult.nearest_score)

    def passes(self, min_similarity: float | None) -> bool:
        """Not declined by the cut (the server's rule, rag.pipeline.off_topic)."""
        from rag.pipeline import off_topic

        return not off_topic(self.similarity, min_similarity)

    def margin_after(self, min_similarity: float | None) -> float:
        """Its best margin, or -inf where the cut declines it (declined at any threshold: what the cut does)."""
        return self.best_margin if self.passes(min_similarity) else -math.inf


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


def _right(answerable: Sequence[float], unanswerable: Sequence[float], threshold: float) -> float:
    said, declined = decided(answerable, unanswerable, threshold)
    return said / max(len(answerable), 1) + declined / max(len(unanswerable), 1)


def _room(value: float, others: Sequence[float]) -> float:
    return min((abs(value - m) for m in others), default=math.inf)


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
    return max(cands, key=lambda th: (round(_right(answerable, unanswerable, th), 9), _room(th, finite)))


def split_margins(scored: Sequence[Scored], min_similarity: float | None) -> tuple[list[float], list[float]]:
    """(answerable, unanswerable) best margins after the cut (-inf: declined by it)."""
    return (
        [s.margin_after(min_similarity) for s in scored if s.question.answerable],
        [s.margin_after(min_similarity) for s in scored if not s.question.answerable],
    )


def choose_settings(scored: Sequence[Scored]) -> tuple[float | None, float]:
    """(min_similarity, reader_threshold) that decide best together, as choose_threshold does for one: every cut
    halfway between neighbouring similarities, or none, each with its best threshold over the margins it lets
    through; of equally good cuts, no cut, else the one farthest from any similarity."""
    sims = sorted({s.similarity for s in scored if s.similarity is not None and math.isfinite(s.similarity)})
    cuts: list[float | None] = [None, *((a + b) / 2 for a, b in zip(sims, sims[1:]))]
    best: tuple | None = None
    for cut in cuts:
        answerable, unanswerable = split_margins(scored, cut)
        threshold = choose_threshold(answerable, unanswerable)
        key = (round(_right(answerable, unanswerable, threshold), 9), math.inf if cut is None else _room(cut, sims))
        if best is None or key > best[0]:
            best = (key, cut, threshold)
    assert best is not None
    return best[1], best[2]


def decisions(
    scored: Sequence[Scored], threshold: float, rank_penalty: float, min_similarity: float | None = None
) -> dict:
    """How the settings decide the questions: answered (of the answerable), declined (of the others; by the cut or
    the threshold), the share of right decisions, and (where topics are known) how often the passage quoted is the
    topic's document."""
    from rag.reader import choose_passage

    ans = [s for s in scored if s.question.answerable]
    none = [s for s in scored if not s.question.answerable]
    said, declined = decided(*split_margins(scored, min_similarity), threshold)
    topical = [s for s in ans if s.question.topic is not None]
    row = {
        "threshold": round(threshold, 4),
        "min_similarity": None if min_similarity is None else round(min_similarity, 4),
        "answered": said / max(len(ans), 1),
        "declined": declined / max(len(none), 1),
        "right": (said + declined) / len(scored),
    }
    if topical:
        row["quoted_topic"] = sum(
            s.margin_after(min_similarity) >= threshold
            and s.doc_ids[choose_passage(s.margins, rank_penalty)] == s.question.topic
            for s in topical
        ) / len(topical)
    return row


def score_questions(reader, coll, questions: Sequence[LabelledQuestion], num_passages: int, progress: bool = True):
    """Each question searched as the server searches (the collection's default mode) and read."""
    from tqdm import tqdm

    from rag.passages import merge_hits, numbered

    out = []
    for q in tqdm(questions, desc="reading", unit="question", disable=not progress):
        found = coll.search(query=q.text, k=num_passages)
        passages = numbered(merge_hits(found.hits))
        margins = tuple(m for m, _ in reader.scores(q.text, [p.text for p in passages]))
        best = max(margins, default=-math.inf)
        out.append(Scored(q, best, margins, tuple(p.doc_id for p in passages), found.nearest_score))
    return out


def calibrate(reader, coll, questions: Sequence[LabelledQuestion], num_passages: int, progress: bool = True) -> dict:
    """The collection's settings for `reader` and the decisions at its current ones (unset threshold: the
    reader's own) and at the new ones."""
    scored = score_questions(reader, coll, questions, num_passages, progress)
    cut, threshold = choose_settings(scored)
    current = coll.config.reader_threshold
    return {
        "questions": len(scored),
        "answerable": sum(s.question.answerable for s in scored),
        "reader_threshold": round(threshold, 4),
        "min_similarity": None if cut is None else round(cut, 4),
        "before": decisions(
            scored,
            reader.cfg.null_threshold if current is None else current,
            reader.cfg.rank_penalty,
            coll.config.min_similarity,
        ),
        "after": decisions(scored, threshold, reader.cfg.rank_penalty, cut),
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
        "--write",
        action="store_true",
        help="store the calibrated reader_threshold and min_similarity in the collection",
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
            colls.update(
                args.collection, reader_threshold=result["reader_threshold"], min_similarity=result["min_similarity"]
            )
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
        cut = "no similarity cut" if r["min_similarity"] is None else f"min_similarity {r['min_similarity']:.4f}"
        print(
            f"  threshold {r['threshold']:+.3f}, {cut} ({'now' if name == 'before' else 'calibrated'}): answered "
            f"{r['answered']:.2f} of the answerable, declined {r['declined']:.2f} of the rest, right "
            f"{r['right']:.2f}{topic}"
        )
    threshold, cut = result["reader_threshold"], result["min_similarity"]
    if args.write:
        print(f"wrote reader_threshold {threshold}, min_similarity {cut} to {args.collection} in {args.data_dir}")
    else:
        flag = "--no-min-similarity" if cut is None else f"--min-similarity {cut}"
        print(
            f"set them: pqrag collections update {args.collection} --reader-threshold {threshold} {flag} (on a "
            "running server), or run this again with --write (no server holding the data dir)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
