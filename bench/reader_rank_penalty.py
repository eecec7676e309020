"""How the extractive reader picks the passage it answers from: its span margin against retrieval's order.

    python bench/reader_rank_penalty.py [--n 300] [--reader models/pqrag-reader]

SQuAD questions of the training half of articles (rag.sft_squad.training_article: never evaluated by
bench/rag_real_sets, so choosing rank_penalty here does not tune on the evaluation), each searched in the
`squad` collection bench/rag_real_sets ingests (the server's default search, 5 hits, merged as the server
merges them); the reader scores every passage once, then each rank_penalty is replayed: answer from the passage
with the best margin - rank_penalty * rank. Prints F1 (no threshold: every question here is answerable) and how
often the chosen passage holds a gold answer, beside reading only the top passage and an oracle choice.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import rag_real_sets as sets  # noqa: E402
from rag.answer_scores import f1, normalize  # noqa: E402
from rag.passages import merge_hits, numbered  # noqa: E402
from rag.reader import Reader  # noqa: E402


def collect(reader: Reader, n: int, seed: int, data_dir: Path) -> list[dict]:
    docs, questions = sets.squad(n, seed, training=True)
    colls, coll = sets.collection(data_dir, "squad", docs)
    rows = []
    try:
        for q in questions:
            passages = numbered(merge_hits(coll.search(query=q.text, k=5).hits))
            scored = reader.scores(q.text, [p.text for p in passages])
            rows.append(
                {
                    "gold": q.answers,
                    "margins": [m for m, _ in scored],
                    "texts": [t for _, t in scored],
                    "has": [any(normalize(g) in normalize(p.text) for g in q.answers) for p in passages],
                }
            )
    finally:
        colls.close()
    return rows


def replay(rows: list[dict], penalty: float) -> tuple[float, float]:
    """(F1, chosen passage holds gold) answering from argmax margin - penalty * rank."""
    total = held = 0.0
    for r in rows:
        ranked = [(m - penalty * i, i) for i, m in enumerate(r["margins"]) if math.isfinite(m)]
        if not ranked:
            continue
        k = max(ranked)[1]
        total += max(f1(r["texts"][k], g) for g in r["gold"])
        held += r["has"][k]
    return total / len(rows), held / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--reader", default=str(ROOT / "models" / "pqrag-reader"))
    ap.add_argument("--data-dir", default=str(ROOT / "bench" / "out" / "rag_real_data"))
    args = ap.parse_args()
    rows = collect(Reader.load(args.reader), args.n, args.seed, Path(args.data_dir))
    oracle = sum(max((max(f1(t, g) for g in r["gold"]) for t in r["texts"]), default=0.0) for r in rows) / len(rows)
    print(f"{len(rows)} SQuAD questions (training half of articles, seed {args.seed}), 5 hits\n")
    print("| passage choice | F1 | chosen passage holds gold |\n|---|---:|---:|")
    for penalty in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0):
        f, h = replay(rows, penalty)
        print(f"| margin - {penalty:g} x rank | {f:.3f} | {h:.3f} |")
    f, h = replay(rows, 1e9)
    print(f"| top passage only | {f:.3f} | {h:.3f} |\n| oracle passage (best F1) | {oracle:.3f} | |")


if __name__ == "__main__":
    main()
