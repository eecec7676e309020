"""Concurrent Ask load against a real server: requests/s, time to first token and end-to-end latency p50/p99,
and the retrieval share of each answer, at 1, 8 and 32 concurrent clients.

Starts `pqrag serve` (subprocess, fresh data dir) with the generator given by --model (default: the bundled
models/pqrag-small), ingests the bundled Python documentation, then runs closed-loop clients: each sends its
next question as soon as its previous answer ended. Answers have a fixed length (ignore_eos, --max-tokens) so
the load is the same whatever the model writes.

    python bench/rag.py [--clients 1 8 32] [--requests-per-client 4] [--max-tokens 64] [--out bench/out/rag.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.cli import default_model  # noqa: E402
from service.client import Client  # noqa: E402
from service.launcher import start_server_process  # noqa: E402

QUESTIONS = [
    "How do I open a file for reading?",
    "What does the with statement do?",
    "How are exceptions raised?",
    "What is a list comprehension?",
    "How does the import system find modules?",
    "What does yield do?",
    "How do I define a class?",
    "What is the difference between is and ==?",
    "How do lambda expressions work?",
    "What does the global statement do?",
    "How are keyword arguments passed?",
    "What is a generator expression?",
]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_level(target: str, clients: int, per_client: int, max_tokens: int) -> dict:
    records: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        with Client(target, timeout=600) as c:
            for j in range(per_client):
                q = QUESTIONS[(i * per_client + j) % len(QUESTIONS)]
                t0 = time.perf_counter()
                try:
                    r = c.ask("python", q, num_passages=4, max_tokens=max_tokens, ignore_eos=True)
                except Exception as exc:  # counted, not fatal: the table reports it
                    with lock:
                        errors.append(repr(exc))
                    continue
                e2e = (time.perf_counter() - t0) * 1e3
                f = r["final"]
                with lock:
                    records.append(
                        {
                            "e2e_ms": e2e,
                            "ttft_ms": f["time_to_first_token_ms"],
                            "retrieval_ms": f["retrieval_ms"],
                            "tokens": f["completion_tokens"],
                        }
                    )

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    e2e = [r["e2e_ms"] for r in records]
    return {
        "clients": clients,
        "requests": len(records),
        "errors": len(errors),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(records) / wall, 3),
        "output_tokens_per_s": round(sum(r["tokens"] for r in records) / wall, 1),
        "ttft_p50_ms": round(pct([r["ttft_ms"] for r in records], 50), 1),
        "ttft_p99_ms": round(pct([r["ttft_ms"] for r in records], 99), 1),
        "e2e_p50_ms": round(pct(e2e, 50), 1),
        "e2e_p99_ms": round(pct(e2e, 99), 1),
        "retrieval_share": round(sum(r["retrieval_ms"] for r in records) / max(sum(e2e), 1e-9), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="generator checkpoint (default: the bundled model)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--docs", type=int, default=400, help="Python documentation topics to ingest")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "rag.json"))
    args = ap.parse_args()
    model = args.model or default_model()
    if model is None:
        sys.exit("no generator: pass --model DIR (no bundled models/pqrag-small found)")

    from retrieval.corpora import python_docs

    data_dir = tempfile.mkdtemp(prefix="pqrag-bench-rag-")
    proc, target = start_server_process(data_dir, extra_args=("--model", model))
    try:
        with Client(target, timeout=3600) as c:
            c.wait_ready()
            c.create_collection("python")
            list(c.ingest("python", list(python_docs())[: args.docs]))
            c.ask("python", QUESTIONS[0], max_tokens=4)  # warm-up
        levels = [run_level(target, n, args.requests_per_client, args.max_tokens) for n in args.clients]
    finally:
        proc.terminate()
        proc.wait()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "model": model,
        "max_tokens": args.max_tokens,
        "levels": levels,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(
        "| clients | req/s | out tok/s | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | e2e p99 ms | retrieval share |"
        " errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for lv in levels:
        print(
            f"| {lv['clients']} | {lv['requests_per_s']} | {lv['output_tokens_per_s']} | {lv['ttft_p50_ms']} | "
            f"{lv['ttft_p99_ms']} | {lv['e2e_p50_ms']} | {lv['e2e_p99_ms']} | {lv['retrieval_share']:.1%} | "
            f"{lv['errors']} |"
        )


if __name__ == "__main__":
    main()
