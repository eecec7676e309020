"""Train the extractive reader (rag/reader.py): start/end span prediction with a no-answer option.

    python -m rag.train_reader --out models/pqrag-reader [--squad ../shared/data/squad-v1.1-dev] [--json]

Data (every example: a question, one passage, the answer's character span in it or none):
- SQuAD v1.1 dev, only the articles rag.sft_squad.training_article keeps (bench/rag_real_sets evaluates on the
  others), when --squad exists: each question with its paragraph and its first annotated answer, and for
  `none_fraction` of them a paragraph of the same article holding none of its answers (no answer);
- the Python docs (rag.sft_data's question forms and answers: a topic's first sentences, the sentence of a term,
  of an exception), and the same questions over another topic's chunk (no answer).
A fixed share of the SQuAD questions (by id) and of the Python-docs examples is held out: the no-answer threshold
is the one that maximises held-out F1 over "groups" as retrieval hands them over (the answering passage among
same-article distractors, or the distractors alone: then declining scores 1), and the held-out scores are printed.

Windows longer than the reader's max_length are split (stride) as at inference; a window that does not hold the
whole answer is trained to say no answer (its [CLS] token), as BERT's SQuAD recipe does.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from rag.reader import Reader, ReaderConfig, ReaderModel, collapse, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SQUAD = ROOT.parent / "shared" / "data" / "squad-v1.1-dev"


@dataclass
class Example:
    question: str
    context: str  # collapsed (rag.reader.collapse)
    start: int  # character span of the answer in context; -1: no answer
    end: int
    group: str  # examples of one question share it (held-out groups are built from them)


@dataclass
class TrainReaderConfig:
    batch_size: int = 16
    epochs: float = 1.0
    lr: float = 1e-4
    warmup: float = 0.06  # share of the steps
    weight_decay: float = 0.01
    none_fraction: float = 0.3  # SQuAD questions that also get a no-answer paragraph
    pydocs: int = 1500  # Python-docs examples (each with a no-answer twin)
    held_out: float = 0.1  # share of questions kept for the threshold and the held-out scores
    seed: int = 0


def _locate(text: str, start: int, answer: str) -> tuple[int, int] | None:
    """The answer's span in collapse(text), from its span (start) in text."""
    flat, want = collapse(text), collapse(answer)
    head = text[:start]
    pos = len(collapse(head)) + (1 if head and head[-1].isspace() and head.strip() else 0)
    if flat[pos : pos + len(want)] == want:
        return pos, pos + len(want)
    pos = flat.find(want)
    return (pos, pos + len(want)) if pos >= 0 and want else None


def held(key: str, share: float) -> bool:
    return zlib.crc32(key.encode()) % 1000 < share * 1000


def squad_examples(squad_dir: Path, cfg: TrainReaderConfig, rng: random.Random) -> list[Example]:
    from rag.sft_data import read_jsonl
    from rag.sft_squad import training_article

    corpus = {d["_id"]: d for d in read_jsonl(squad_dir / "corpus.jsonl") if training_article(d["title"])}
    by_title: dict[str, list[str]] = {}
    for d in corpus.values():
        by_title.setdefault(d["title"], []).append(d["_id"])
    queries = {q["_id"]: q["text"] for q in read_jsonl(squad_dir / "queries.jsonl")}
    out = []
    for a in read_jsonl(squad_dir / "answers.jsonl"):
        doc = corpus.get(a["doc_id"])
        if doc is None or a["_id"] not in queries:
            continue
        span = _locate(doc["text"], a["answer_starts"][0], a["answers"][0])
        if span is None:
            continue
        q = queries[a["_id"]]
        out.append(Example(q, collapse(doc["text"]), *span, group=f"squad:{a['_id']}"))
        if rng.random() < cfg.none_fraction:
            others = [
                corpus[i]["text"]
                for i in by_title[doc["title"]]
                if i != doc["_id"] and not any(collapse(g) in collapse(corpus[i]["text"]) for g in a["answers"])
            ]
            if others:
                out.append(Example(q, collapse(rng.choice(others)), -1, -1, group=f"squad:{a['_id']}"))
    return out


def pydocs_examples(cfg: TrainReaderConfig, rng: random.Random) -> list[Example]:
    from rag.sft_data import RagSftConfig, exception_question, make_question, term_question, topic_chunks

    chunks = topic_chunks(RagSftConfig())
    targets = [t for t in chunks if t.answer]
    out = []
    for n in range(cfg.pydocs):
        t = rng.choice(targets)
        r = rng.random()
        made = term_question(t, rng) if r < 0.45 else exception_question(t, rng) if r < 0.6 else None
        question, answer = (made[0], made[1]) if made else (make_question(t, rng), t.answer)
        context = collapse(t.chunk.text)
        pos = context.find(answer)
        if pos < 0:
            continue
        out.append(Example(question, context, pos, pos + len(answer), group=f"pydocs:{n}"))
        other = rng.choice([c for c in chunks if c.topic != t.topic])
        if answer not in collapse(other.chunk.text):
            out.append(Example(question, collapse(other.chunk.text), -1, -1, group=f"pydocs:{n}"))
    return out


def windows(tokenizer, rc: ReaderConfig, examples: Sequence[Example]) -> list[tuple[list[int], list[int], int, int]]:
    """(input_ids, token_type_ids, start token, end token) per window; (0, 0): no answer in this window."""
    out = []
    for lo in range(0, len(examples), 256):
        batch = examples[lo : lo + 256]
        enc = tokenizer(
            [e.question for e in batch],
            [e.context for e in batch],
            truncation="only_second",
            max_length=rc.max_length,
            stride=rc.stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        for w, k in enumerate(enc["overflow_to_sample_mapping"]):
            e, seq, off = batch[k], enc.sequence_ids(w), enc["offset_mapping"][w]
            s = t = 0
            ctx = [i for i, sid in enumerate(seq) if sid == 1]
            if e.start >= 0 and ctx and off[ctx[0]][0] <= e.start and off[ctx[-1]][1] >= e.end:
                s = next(i for i in ctx if off[i][1] > e.start)
                t = next(i for i in reversed(ctx) if off[i][0] < e.end)
                if t - s >= rc.max_answer_tokens:
                    s = t = 0
            out.append((enc["input_ids"][w], enc["token_type_ids"][w], s, t))
    return out


def batches(items: list, batch_size: int, rng: random.Random) -> list[list]:
    """Shuffled batches of similar lengths (less padding): sort within shuffled pools of 50 batches."""
    order = items[:]
    rng.shuffle(order)
    out = []
    pool = batch_size * 50
    for lo in range(0, len(order), pool):
        chunk = sorted(order[lo : lo + pool], key=lambda x: len(x[0]))
        out += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


def collate(batch, pad_id: int):
    T = max(len(x[0]) for x in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    types = torch.zeros((len(batch), T), dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    for r, (i, ty, _, _) in enumerate(batch):
        ids[r, : len(i)] = torch.tensor(i)
        types[r, : len(ty)] = torch.tensor(ty)
        mask[r, : len(i)] = 1
    return ids, mask, types, torch.tensor([x[2] for x in batch]), torch.tensor([x[3] for x in batch])


def choose_threshold(reader: Reader, groups: list[tuple[str, list[str], list[str]]]) -> tuple[float, dict]:
    """groups: (question, passages, gold answers; [] = none answers). The threshold (over the best margins)
    that maximises mean F1, declining scoring 1 where no passage answers and 0 elsewhere; and the scores."""
    from rag.answer_scores import f1 as span_f1

    rows = []
    for q, passages, gold in groups:
        scored = reader.scores(q, passages)
        m, text = max(scored, key=lambda x: x[0])
        rows.append((m, max((span_f1(text, g) for g in gold), default=0.0), not gold))
    cands = sorted({-math.inf, *(m for m, _, _ in rows)})

    def mean_f1(th: float) -> float:
        return sum((f if m >= th else 0.0) if not none else float(m < th) for m, f, none in rows) / len(rows)

    best = max(cands, key=mean_f1)
    best = best if math.isfinite(best) else min(m for m, _, _ in rows) - 1.0
    ans = [(m, f) for m, f, none in rows if not none]
    none = [m for m, _, n in rows if n]
    return best, {
        "groups": len(rows),
        "f1": mean_f1(best),
        "answerable_f1": sum(f if m >= best else 0.0 for m, f in ans) / max(len(ans), 1),
        "answerable_f1_no_threshold": sum(f for _, f in ans) / max(len(ans), 1),
        "declined_unanswerable": sum(m < best for m in none) / max(len(none), 1),
    }


def held_out_groups(examples: list[Example], rng: random.Random, by_gold: dict[str, list[str]]):
    """Groups as retrieval hands them over: the answering passage (or not) among 2 passages of other questions
    from the same source, in a shuffled order."""
    by_q: dict[str, list[Example]] = {}
    for e in examples:
        by_q.setdefault(e.group, []).append(e)
    pool = [e.context for e in examples]
    out = []
    for g, es in by_q.items():
        pos = next((e for e in es if e.start >= 0), None)
        negs = [e.context for e in es if e.start < 0]
        if pos is None:
            continue
        distract = negs + [c for c in rng.sample(pool, 3) if c != pos.context][: 2 - len(negs)]
        passages = [pos.context, *distract]
        rng.shuffle(passages)
        out.append((pos.question, passages, by_gold.get(g, [pos.context[pos.start : pos.end]])))
        if rng.random() < 0.25:
            out.append((pos.question, distract, []))
    return out


def train(args) -> dict:
    cfg = TrainReaderConfig(
        batch_size=args.batch_size, epochs=args.epochs, lr=args.lr, pydocs=args.pydocs, seed=args.seed
    )
    rc = ReaderConfig(trained_layers=args.trained_layers)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    examples: list[Example] = []
    by_gold: dict[str, list[str]] = {}
    squad_dir = Path(args.squad)
    if (squad_dir / "corpus.jsonl").exists():
        examples += squad_examples(squad_dir, cfg, rng)
        from rag.sft_data import read_jsonl

        by_gold = {f"squad:{a['_id']}": a["answers"] for a in read_jsonl(squad_dir / "answers.jsonl")}
    else:
        print(f"note: {squad_dir} not found: Python-docs examples only", file=sys.stderr)
    examples += pydocs_examples(cfg, rng)
    train_ex = [e for e in examples if not held(e.group, cfg.held_out)]
    dev_ex = [e for e in examples if held(e.group, cfg.held_out)]
    if args.limit:
        train_ex = rng.sample(train_ex, min(args.limit, len(train_ex)))
        dev_ex = dev_ex[: max(args.limit // 10, 8)]

    tokenizer = load_tokenizer(rc)
    model = ReaderModel(rc)
    model.set_trainable()
    items = windows(tokenizer, rc, train_ex)
    steps = max(1, math.ceil(len(items) / cfg.batch_size * cfg.epochs))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))
    )
    from tqdm import tqdm

    bar = tqdm(total=steps, desc="reader", unit="step", disable=args.json or not sys.stderr.isatty())
    t0, step, losses = time.perf_counter(), 0, []
    model.train()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / "metrics.jsonl", "w")
    while step < steps:
        for batch in batches(items, cfg.batch_size, rng):
            if step >= steps:
                break
            ids, mask, types, s, e = collate(batch, tokenizer.pad_token_id)
            start, end = model(ids, mask, types)
            neg = (1 - mask).bool()
            start, end = start.masked_fill(neg, -1e4), end.masked_fill(neg, -1e4)
            loss = (torch.nn.functional.cross_entropy(start, s) + torch.nn.functional.cross_entropy(end, e)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
            log.write(json.dumps({"step": step, "loss": losses[-1], "lr": sched.get_last_lr()[0]}) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
            if bar.disable and step % 50 == 0:  # no terminal (a log file): a line every 50 steps instead
                print(f"step {step}/{steps} loss {sum(losses[-50:]) / 50:.3f}", file=sys.stderr, flush=True)
    bar.close()
    log.close()
    model.eval()
    reader = Reader(rc, model, tokenizer)
    threshold, dev = choose_threshold(reader, held_out_groups(dev_ex, random.Random(1), by_gold))
    rc.null_threshold = round(float(threshold), 4)
    reader.save(out_dir)
    return {
        "out": str(out_dir),
        "train_examples": len(train_ex),
        "windows": len(items),
        "steps": steps,
        "seconds": round(time.perf_counter() - t0, 1),
        "final_loss": sum(losses[-50:]) / max(len(losses[-50:]), 1),
        "null_threshold": rc.null_threshold,
        "held_out": dev,
    }


def main(argv: list[str] | None = None) -> int:
    d = TrainReaderConfig()
    p = argparse.ArgumentParser(prog="python -m rag.train_reader", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the reader's directory (reader_config.json, reader.safetensors)")
    p.add_argument("--squad", default=str(DEFAULT_SQUAD), help="SQuAD v1.1 dev in BEIR layout (skipped if missing)")
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--pydocs", type=int, default=d.pydocs, help="Python-docs questions")
    p.add_argument("--trained-layers", type=int, default=ReaderConfig().trained_layers)
    p.add_argument("--limit", type=int, default=0, help="train on at most this many examples (smoke runs)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print only the summary, as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = train(args)
    print(json.dumps(summary, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
