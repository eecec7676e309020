"""Speculative decoding benchmark: the bundled model (models/pqrag-small) answering RAG questions over the Python
docs, with and without n-gram drafts (llm/speculative.py), in the same run.

    python bench/speculative.py                                   # 1, 8 and 32 streams, 32 questions
    python bench/speculative.py --questions 8 --streams 1 8 --repeats 1   # a smoke run
    python bench/speculative.py --device cuda --dtype bfloat16 --retrieval topic    # bench/gpu_check.sh
    python bench/speculative.py --grounding quote                 # the server's default for the bundled model

Prompts are built the server's way (bench/rag_real_sets.py): the demo collection of Python's reference topics
(retrieval.corpora.python_docs, ingested once under --data-dir), a search per question of
bench/data/python_docs_questions.jsonl, rag.prompt.build_prompt with the model's chat template; greedy answers.
`--retrieval topic` (no embedder, for the GPU box) gives each answerable question the first chunks of the topic
that answers it instead of a search.

- single stream: the questions one at a time; decode tokens/s = tokens after the first / time after the first
  token (the prompt's prefill is the same work either way), and whether every answer is identical token for token;
- N streams: N questions at once (max_num_seqs = N), generated tokens / wall time, for no speculation, speculation
  in every step (disable_by_batch_size = N) and the default threshold (SpeculativeConfig.disable_by_batch_size);
  with the acceptance rate and the tokens emitted per drafted sequence step.
Each configuration runs once untimed, then --repeats times interleaved; the best time counts. Prints a table and
writes bench/out/speculative.md (date, machine, numbers) for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.engine import machine  # noqa: E402
from bench.rag_real_sets import collection, prompts, python_docs  # noqa: E402
from llm import LLM, SamplingParams  # noqa: E402
from llm.speculative_config import SpeculativeConfig  # noqa: E402
from rag.passages import Passage  # noqa: E402
from rag.pipeline import quote_index  # noqa: E402
from rag.prompt import build_prompt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}


def topic_prompts(llm: LLM, docs: list[dict], questions, num_passages: int, max_tokens: int):
    """Prompts whose passages are the first num_passages ~800-character chunks of each question's answering topic."""
    text = {d["id"]: d["text"] for d in docs}
    out = []
    for q in questions:
        body = text[q.topic]
        hits = [
            Passage(q.topic, i, 1.0 - i / 100, body[a : a + 800], q.topic, a, min(a + 800, len(body)))
            for i, a in enumerate(range(0, min(len(body), 800 * num_passages), 800))
        ]
        msgs = [{"role": "user", "content": q.text}]
        p = build_prompt(llm.engine.tokenizer, msgs, hits, llm.engine.max_model_len, max_tokens)
        out.append((p.token_ids, p.passages))
    return out


def sampling(llm: LLM, built, grounding: str, max_tokens: int) -> list[SamplingParams]:
    """Per prompt: greedy, free or under its passages' quote constraint (rag.pipeline.quote_index)."""
    if grounding == "free":
        return [SamplingParams(temperature=0.0, max_tokens=max_tokens)] * len(built)
    tok = llm.engine.tokenizer
    return [SamplingParams(temperature=0.0, max_tokens=max_tokens, constraint=quote_index(tok, ps)) for _, ps in built]


def run(llm: LLM, built, params: list[SamplingParams], streams: int) -> dict:
    """Generate for `built` ((ids, passages) pairs) in waves of `streams` prompts (1 = one at a time); tokens,
    seconds, decode seconds."""
    engine = llm.engine
    before = engine.stats()
    t0, outs = time.perf_counter(), []
    for i in range(0, len(built), streams):
        outs += llm.generate([ids for ids, _ in built[i : i + streams]], params[i : i + streams])
    seconds = time.perf_counter() - t0
    after = engine.stats()
    delta = {k: after[k] - before[k] for k in ("spec_num_drafts", "spec_num_draft_tokens", "spec_num_accepted_tokens")}
    tokens = sum(len(o.token_ids) for o in outs)
    decode_s = sum(o.metrics.e2e_latency - o.metrics.ttft for o in outs)
    return {
        "ids": [o.token_ids for o in outs],
        "tokens": tokens,
        "seconds": seconds,
        "decode_tokens_per_s": (tokens - len(outs)) / decode_s if decode_s > 0 else 0.0,
        "tokens_per_s": tokens / seconds,
        "acceptance": delta["spec_num_accepted_tokens"] / max(delta["spec_num_draft_tokens"], 1),
        "per_step": 1 + delta["spec_num_accepted_tokens"] / delta["spec_num_drafts"]
        if delta["spec_num_drafts"]
        else 1.0,
    }


def best_of(llms: dict[str, LLM], built, params, streams: int, repeats: int) -> dict[str, dict]:
    """Warm each configuration up once, then time them interleaved; per configuration the fastest run."""
    for llm in llms.values():
        run(llm, built[: max(streams, 1)], params[: max(streams, 1)], streams)
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for name, llm in llms.items():
            r = run(llm, built, params, streams)
            if name not in best or r["seconds"] < best[name]["seconds"]:
                best[name] = r
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "pqrag-small"))
    ap.add_argument("--questions", type=int, default=32, help="of bench/data/python_docs_questions.jsonl (cycled)")
    ap.add_argument("--single", type=int, default=16, help="questions answered one at a time (single stream)")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--passages", type=int, default=None, help="passages per prompt (default: the server's)")
    ap.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: the engine's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--retrieval", choices=["search", "topic"], default="search", help="how passages are chosen")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--grounding", choices=["free", "quote"], default="free", help="decoding (quote: the bundled default)"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--data-dir", default=str(ROOT / "bench" / "out" / "rag_real_data"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "speculative.md"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    from rag.request import DEFAULT_NUM_PASSAGES

    docs, questions = python_docs(10**6)
    if args.retrieval == "topic":
        questions = [q for q in questions if q.topic is not None]
    questions = [questions[i % len(questions)] for i in range(args.questions)]
    default_threshold = SpeculativeConfig().disable_by_batch_size
    dev = args.device
    plain = LLM(args.model, device=dev, dtype=dtype)
    num_passages = args.passages or DEFAULT_NUM_PASSAGES
    if args.retrieval == "topic":
        built = topic_prompts(plain, docs, questions, num_passages, args.max_tokens)
    else:
        colls, coll = collection(Path(args.data_dir), "python-docs", docs)
        try:
            built = prompts(plain, coll, questions, num_passages, args.max_tokens)
        finally:
            colls.close()
    params = sampling(plain, built, args.grounding, args.max_tokens)
    lines = [f"Grounding: {args.grounding}.\n"]

    # single stream
    spec = LLM(args.model, device=dev, dtype=dtype, speculative_config=NGRAM)
    single = best_of({"plain": plain, "spec": spec}, built[: args.single], params[: args.single], 1, args.repeats)
    same = sum(a == b for a, b in zip(single["plain"]["ids"], single["spec"]["ids"]))
    p, s = single["plain"], single["spec"]
    lines += [
        f"Single stream, {args.single} questions one at a time, greedy, max {args.max_tokens} tokens, {NGRAM}:\n",
        "| | decode tokens/s | end-to-end tokens/s | acceptance | tokens per drafted step |",
        "|---|---:|---:|---:|---:|",
        f"| no speculation | {p['decode_tokens_per_s']:.1f} | {p['tokens_per_s']:.1f} | | |",
        f"| n-gram | {s['decode_tokens_per_s']:.1f} | {s['tokens_per_s']:.1f} | {s['acceptance']:.2f} | "
        f"{s['per_step']:.2f} |",
        "",
        f"Decode speed-up {s['decode_tokens_per_s'] / p['decode_tokens_per_s']:.2f}x, end-to-end "
        f"{s['tokens_per_s'] / p['tokens_per_s']:.2f}x; identical greedy answers: {same}/{args.single}.\n",
    ]

    # concurrent streams
    lines += [
        f"Concurrent streams, {args.questions} questions in waves of N (max_num_seqs = N), generated tokens/s:\n",
        "| streams | no speculation | n-gram, every step | speed-up | acceptance | tokens per drafted step | "
        f"n-gram, default threshold ({default_threshold}) | speed-up | identical answers |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in args.streams:
        llms = {
            "plain": LLM(args.model, device=dev, dtype=dtype, max_num_seqs=n),
            "always": LLM(
                args.model,
                device=dev,
                dtype=dtype,
                max_num_seqs=n,
                speculative_config={**NGRAM, "disable_by_batch_size": n},
            ),
            "default": LLM(args.model, device=dev, dtype=dtype, max_num_seqs=n, speculative_config=NGRAM),
        }
        r = best_of(llms, built, params, n, args.repeats)
        base = r["plain"]["tokens_per_s"]
        same = sum(a == b == c for a, b, c in zip(r["plain"]["ids"], r["always"]["ids"], r["default"]["ids"]))
        lines.append(
            f"| {n} | {base:.1f} | {r['always']['tokens_per_s']:.1f} | {r['always']['tokens_per_s'] / base:.2f}x | "
            f"{r['always']['acceptance']:.2f} | {r['always']['per_step']:.2f} | {r['default']['tokens_per_s']:.1f} | "
            f"{r['default']['tokens_per_s'] / base:.2f}x | {same}/{len(built)} |"
        )
        print(lines[-1], flush=True)

    p0 = next(iter(plain.engine.model.parameters()))
    text = "\n".join(lines)
    report = (
        f"# bench/speculative.py, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n\n"
        f"Model {args.model} ({p0.dtype}), machine: {machine()}; threads {torch.get_num_threads()}.\n\n{text}\n"
    )
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
