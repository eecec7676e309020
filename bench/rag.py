"""Concurrent Ask load against a real server: requests/s, time to first token and end-to-end latency p50/p99,
and the retrieval share of each answer, at 1, 8 and 32 concurrent clients.

--http runs the same load over the HTTP front door too (POST /v1/chat/completions, streamed, with the `rag`
extension: the same question, passages, answer length and pipeline), level by level alternating with gRPC, and
reports the HTTP path's overhead: HTTP minus gRPC at p50 and p99 of the time to the first answer text and of the
whole answer, both measured by the client (gRPC's Ask stream, raw SSE over httpx: no SDK on either side).

Starts `pqrag serve` (subprocess, fresh data dir) with the generator given by --model (default: the bundled
models/pqrag-small), ingests the bundled Python documentation, then runs closed-loop clients: each sends its
next question as soon as its previous answer ended. Answers have a fixed length (ignore_eos, --max-tokens) so
the load is the same whatever the model writes.

    python bench/rag.py [--clients 1 8 32] [--requests-per-client 4] [--max-tokens 64] [--out bench/out/rag.json]
    python bench/rag.py --http [--out bench/out/rag_http.json]
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
from service.launcher import read_http_url, start_server_process  # noqa: E402

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


def ask_grpc(c: Client, question: str, max_tokens: int) -> dict:
    """One answer over gRPC's Ask stream, timed by the client; the server's own timings from its AnswerEnd."""
    t0 = time.perf_counter()
    first = None
    for event in c.ask_stream("python", question, num_passages=4, max_tokens=max_tokens, ignore_eos=True):
        kind = event.WhichOneof("event")
        if kind == "delta" and first is None:
            first = time.perf_counter()
        elif kind == "final":
            f = event.final
    end = time.perf_counter()
    return {
        "e2e_ms": (end - t0) * 1e3,
        "client_ttft_ms": ((first or end) - t0) * 1e3,
        "ttft_ms": f.time_to_first_token_ms,
        "retrieval_ms": f.retrieval_ms,
        "tokens": f.completion_tokens,
    }


def ask_http(h, question: str, max_tokens: int) -> dict:
    """The same answer over HTTP: a streamed chat completion with the rag extension, read as raw SSE."""
    body = {
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "rag": {"collection": "python", "top_k": 4},
    }
    t0 = time.perf_counter()
    first, tokens = None, 0
    with h.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
    end = time.perf_counter()
    return {"e2e_ms": (end - t0) * 1e3, "client_ttft_ms": ((first or end) - t0) * 1e3, "tokens": tokens}


def run_level(target: str, clients: int, per_client: int, max_tokens: int, http_url: str | None = None) -> dict:
    """Closed-loop clients over gRPC (http_url None) or HTTP."""
    import httpx

    records: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        conn = httpx.Client(base_url=http_url, timeout=600) if http_url else Client(target, timeout=600)
        with conn:
            for j in range(per_client):
                q = QUESTIONS[(i * per_client + j) % len(QUESTIONS)]
                try:
                    r = ask_http(conn, q, max_tokens) if http_url else ask_grpc(conn, q, max_tokens)
                except Exception as exc:  # counted, not fatal: the table reports it
                    with lock:
                        errors.append(repr(exc))
                    continue
                with lock:
                    records.append(r)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    e2e = [r["e2e_ms"] for r in records]
    out = {
        "transport": "http" if http_url else "grpc",
        "clients": clients,
        "requests": len(records),
        "errors": len(errors),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(records) / wall, 3),
        "output_tokens_per_s": round(sum(r["tokens"] for r in records) / wall, 1),
        "client_ttft_p50_ms": round(pct([r["client_ttft_ms"] for r in records], 50), 1),
        "client_ttft_p99_ms": round(pct([r["client_ttft_ms"] for r in records], 99), 1),
        "e2e_p50_ms": round(pct(e2e, 50), 1),
        "e2e_p99_ms": round(pct(e2e, 99), 1),
    }
    if not http_url:
        out["ttft_p50_ms"] = round(pct([r["ttft_ms"] for r in records], 50), 1)
        out["ttft_p99_ms"] = round(pct([r["ttft_ms"] for r in records], 99), 1)
        out["retrieval_share"] = round(sum(r["retrieval_ms"] for r in records) / max(sum(e2e), 1e-9), 4)
    return out


def overhead(grpc: dict, http: dict) -> dict:
    """HTTP minus gRPC, ms, at p50 and p99 (client-side TTFT and whole answer)."""
    keys = ("client_ttft_p50_ms", "client_ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms")
    return {"clients": grpc["clients"], **{k: round(http[k] - grpc[k], 1) for k in keys}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="generator checkpoint (default: the bundled model)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--docs", type=int, default=400, help="Python documentation topics to ingest")
    ap.add_argument("--http", action="store_true", help="also run each level over HTTP and report its overhead")
    ap.add_argument("--out", default=None, help="default bench/out/rag.json (rag_http.json with --http)")
    args = ap.parse_args()
    out = args.out or str(ROOT / "bench" / "out" / ("rag_http.json" if args.http else "rag.json"))
    model = args.model or default_model()
    if model is None:
        sys.exit("no generator: pass --model DIR (no bundled models/pqrag-small found)")

    from retrieval.corpora import python_docs

    data_dir = tempfile.mkdtemp(prefix="pqrag-bench-rag-")
    extra = ("--model", model, "--http-port", "0") if args.http else ("--model", model)
    proc, target = start_server_process(data_dir, extra_args=extra)
    try:
        http_url = read_http_url(proc) if args.http else None
        with Client(target, timeout=3600) as c:
            c.wait_ready()
            c.create_collection("python")
            list(c.ingest("python", list(python_docs())[: args.docs]))
            # Warm-up: every question once, so the engine has seen the shapes and both transports find the same
            # prompts in the prefix cache (else whichever runs second would get the first one's cache hits).
            for q in QUESTIONS:
                c.ask("python", q, num_passages=4, max_tokens=4)
        if http_url:
            run_level(target, 1, 1, 4, http_url)  # the HTTP path's own first request
        levels, overheads = [], []
        for n in args.clients:
            levels.append(run_level(target, n, args.requests_per_client, args.max_tokens))
            if http_url:
                levels.append(run_level(target, n, args.requests_per_client, args.max_tokens, http_url))
                overheads.append(overhead(levels[-2], levels[-1]))
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
    if args.http:
        result["http_overhead_ms"] = overheads
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))
    if not args.http:
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
        return
    print("| clients | transport | req/s | out tok/s | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | e2e p99 ms | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for lv in levels:
        print(
            f"| {lv['clients']} | {lv['transport']} | {lv['requests_per_s']} | {lv['output_tokens_per_s']} | "
            f"{lv['client_ttft_p50_ms']} | {lv['client_ttft_p99_ms']} | {lv['e2e_p50_ms']} | {lv['e2e_p99_ms']} | "
            f"{lv['errors']} |"
        )
    print("\nHTTP overhead (HTTP minus gRPC, ms, client-side):\n")
    print("| clients | TTFT p50 | TTFT p99 | e2e p50 | e2e p99 |")
    print("|---|---|---|---|---|")
    for o in overheads:
        print(
            f"| {o['clients']} | {o['client_ttft_p50_ms']:+} | {o['client_ttft_p99_ms']:+} | {o['e2e_p50_ms']:+} | "
            f"{o['e2e_p99_ms']:+} |"
        )


if __name__ == "__main__":
    main()
