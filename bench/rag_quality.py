"""Answer quality of a generator on held-out synthetic RAG questions: does it cite the right passage, say
"The passages do not say." when no passage answers, and copy the answer from the passage it cites? And, with
--sets squad python-docs, on questions phrased the way people ask (bench/rag_real_sets.py): SQuAD v1.1 dev and
hand-written questions over the Python docs, free vs quote decoding vs an extractive floor.

    python bench/rag_quality.py --sets squad python-docs [--limit 1000] [--models models/pqrag-small ...]

The questions come from rag.sft_data with a seed the fine-tuning data does not use: the same Python
documentation and prompt format as the bundled model's fine-tuning (in-distribution: this measures whether
a model learned the format and the copying, not general knowledge). Greedy decoding through the project's
engine (llm.LLM), prompts rendered with the model's own chat template exactly as the server renders them.

    python bench/rag_quality.py --models models/pqrag-small out/other-model [--n 1000] [--seed 777]
        [--seen-answers out/rag_sft.jsonl]

Per model: cite@1 (answerable questions whose first citation is the right passage), abstain (unanswerable
questions answered with the no-answer sentence), false abstain (answerable ones answered with it), copy F1
(word-level F1 between the answer and the reference, citations removed, as in SQuAD), and answer-token loss
(teacher-forced cross-entropy on the reference answers only).

The fine-tuning data draws its answers from the same passages, so most held-out questions have an answer the
model saw in fine-tuning (with other distractors, another question wording, another position). --seen-answers
(the fine-tuning JSONL) splits the answerable questions into seen and unseen answers and reports the unseen ones
separately: that column is the one that says whether the model copies from the passage or recalls the answer.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llm import LLM, SamplingParams  # noqa: E402
from llm.model import cross_entropy_sum  # noqa: E402
from rag.sft_data import NO_ANSWER, RagSftConfig, generate, topic_chunks  # noqa: E402

_CITE = re.compile(r"\[(\d+)\]")
_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return _WORD.findall(_CITE.sub(" ", text).lower())


def copy_f1(answer: str, reference: str) -> float:
    a, r = _words(answer), _words(reference)
    common = sum((Counter(a) & Counter(r)).values())
    if not a or not r or not common:
        return float(a == r)
    p, rec = common / len(a), common / len(r)
    return 2 * p * rec / (p + rec)


def answer_loss(llm: LLM, prompts: list[list[int]], full: list[list[int]]) -> float:
    """Mean cross-entropy of the reference answer tokens (full[len(prompt):]) given their prompt."""
    model = llm.engine.model
    total, count = 0.0, 0
    with torch.inference_mode():
        for p, f in zip(prompts, full):
            ids = torch.tensor([f], device=next(model.parameters()).device)
            logits = model(ids[:, :-1])
            y = ids[:, 1:].clone()
            y[:, : len(p) - 1] = -100
            loss, n = cross_entropy_sum(logits, y)
            total += float(loss)
            count += int(n)
    return total / max(count, 1)


def score(records: list[dict], texts: list[str]) -> dict:
    cite = abstain = false_abstain = n_ans = n_none = 0
    f1 = 0.0
    for r, text in zip(records, texts):
        ref, text = r["messages"][2]["content"], text.strip()
        said_none = text.startswith(NO_ANSWER)
        if ref == NO_ANSWER:
            n_none += 1
            abstain += said_none
            continue
        n_ans += 1
        false_abstain += said_none
        want = _CITE.findall(ref)[-1]
        got = _CITE.findall(text)
        cite += bool(got) and got[0] == want
        f1 += copy_f1(text, ref)
    return {
        "answerable": n_ans,
        "unanswerable": n_none,
        "cite_at_1": cite / max(n_ans, 1),
        "abstain": abstain / max(n_none, 1),
        "false_abstain": false_abstain / max(n_ans, 1),
        "copy_f1": f1 / max(n_ans, 1),
    }


def evaluate(model_dir: str, records: list[dict], max_tokens: int, seen: set[str], dtype: str = "auto") -> dict:
    llm = LLM(model_dir, dtype=dtype)  # auto: the engine's default (common.device.default_dtype)
    tok = llm.engine.tokenizer
    prompts = [tok.apply_chat_template(r["messages"][:2], add_generation_prompt=True, tokenize=True) for r in records]
    full = [tok.apply_chat_template(r["messages"], add_generation_prompt=False, tokenize=True) for r in records]
    t0 = time.perf_counter()
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens))
    gen_s = time.perf_counter() - t0
    texts = [o.text for o in outs]
    unseen = [
        i
        for i, r in enumerate(records)
        if r["messages"][2]["content"] not in seen and r["messages"][2]["content"] != NO_ANSWER
    ]
    return {
        "model": f"{model_dir} ({str(next(llm.engine.model.parameters()).dtype).removeprefix('torch.')})",
        "questions": len(records),
        **score(records, texts),
        "unseen": score([records[i] for i in unseen], [texts[i] for i in unseen]) if seen else None,
        "answer_loss": answer_loss(llm, prompts, full),
        "generate_s": gen_s,
        "sample": {"question": records[0]["messages"][1]["content"][-200:], "answer": outs[0].text},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=[str(ROOT / "models" / "pqrag-small")])
    ap.add_argument("--n", type=int, default=1000, help="held-out questions")
    ap.add_argument("--seed", type=int, default=777, help="not 0: the bundled model's fine-tuning seed")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument(
        "--seen-answers",
        default=str(ROOT / "out" / "rag_sft.jsonl"),
        help="the fine-tuning JSONL: report questions whose answer is not in it separately ('' = off)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument(
        "--dtype",
        nargs="+",
        default=["auto"],
        choices=["auto", "float32", "bfloat16"],
        help="synthetic: each model in each dtype (auto: the engine's default), e.g. --dtype float32 bfloat16",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "rag_quality.json"))
    ap.add_argument(
        "--sets",
        nargs="+",
        choices=["synthetic", "squad", "python-docs"],
        default=["synthetic"],
        help="synthetic: the held-out fine-tuning-style questions; squad, python-docs: real-phrased questions",
    )
    ap.add_argument("--limit", type=int, default=1000, help="real sets: questions at most (squad: a seeded sample)")
    ap.add_argument(
        "--systems",
        nargs="+",
        choices=["floor", "extract", "free", "quote"],
        default=["floor", "extract", "free", "quote"],
        help="real sets: the extractive floor, the reader (extract), each model's free and quote decoding",
    )
    ap.add_argument("--reader", default=str(ROOT / "models" / "pqrag-reader"), help="real sets: the reader")
    ap.add_argument("--passages", type=int, default=None, help="real sets: passages retrieved (default: the server's)")
    ap.add_argument(
        "--data-dir", default=str(ROOT / "bench" / "out" / "rag_real_data"), help="real sets: their collections"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    real = [s for s in args.sets if s != "synthetic"]
    if real:
        run_real_sets(args, real)
    if "synthetic" not in args.sets:
        return
    records = list(generate(RagSftConfig(n=args.n, seed=args.seed), topic_chunks(RagSftConfig())))
    seen: set[str] = set()
    if args.seen_answers and Path(args.seen_answers).exists():
        with open(args.seen_answers) as f:
            seen = {json.loads(line)["messages"][-1]["content"] for line in f if line.strip()}
    elif args.seen_answers:
        print(f"note: {args.seen_answers} not found (make default-model-sft writes it); no unseen-answer column")
    results = [evaluate(m, records, args.max_tokens, seen, dt) for m in args.models for dt in args.dtype]
    print(
        f"{args.n} held-out synthetic RAG questions (seed {args.seed}), greedy, max {args.max_tokens} tokens; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, torch {torch.__version__}\n"
    )
    u = results[0]["unseen"]
    if u:
        print(
            f"{results[0]['answerable']} answerable ({u['answerable']} with an answer not in {args.seen_answers}), "
            f"{results[0]['unanswerable']} unanswerable\n"
        )
    print(
        "| model | cite@1 | abstain | false abstain | copy F1 | answer loss | unseen: cite@1 | false abstain "
        "| copy F1 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for r in results:
        u = r["unseen"] or {"cite_at_1": float("nan"), "false_abstain": float("nan"), "copy_f1": float("nan")}
        print(
            f"| {r['model']} | {r['cite_at_1']:.3f} | {r['abstain']:.3f} | {r['false_abstain']:.3f} | "
            f"{r['copy_f1']:.3f} | {r['answer_loss']:.3f} | {u['cite_at_1']:.3f} | {u['false_abstain']:.3f} | "
            f"{u['copy_f1']:.3f} |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"n": args.n, "seed": args.seed, "results": results}, indent=2) + "\n")


def run_real_sets(args, names: list[str]) -> None:
    from bench.rag_real_sets import evaluate, table
    from rag.request import DEFAULT_NUM_PASSAGES

    stamp = f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, torch {torch.__version__}"
    results = []
    for name in names:
        r = evaluate(
            name,
            args.models,
            Path(args.data_dir),
            args.limit,
            args.seed,
            num_passages=args.passages or DEFAULT_NUM_PASSAGES,
            max_tokens=args.max_tokens,
            systems=args.systems,
            reader_dir=args.reader,
        )
        results.append(r)
        print(f"\n{name}: {r['passages']} passages per question, greedy, max {args.max_tokens} tokens; {stamp}\n")
        print(table(r))
        for s in r["samples"]:
            print(f"  {s['system']}: {s['question']!r} -> {s['answer'][:160]!r}")
    out = Path(args.out).with_name("rag_quality_real.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
