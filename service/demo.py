"""`make demo`: start the server on embedded defaults, index the Python docs, ask a question over them, and point
to the web console (the HTTP front door: the OpenAI-compatible API and the console at http://localhost:8080/).

Embedded defaults: a data dir with the SQLite store and the PQ index, the offline all-MiniLM-L6-v2
embedder, the bundled corpus (the Python reference topics shipped with every Python) and the bundled
generator (models/pqrag-small, trained by pqrag's own trainer on the Python documentation).
A second run finds the collection already there and skips straight to the questions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from tqdm import tqdm

from retrieval.corpora import python_docs
from service.cli import default_model
from service.client import Client, print_answer
from service.launcher import read_http_url, start_server_process

COLLECTION = "python-docs"
# When its answers decline, as `python -m rag.calibrate_reader` chose them for the bundled reader and embedder on the
# 80 development questions of bench/data/python_docs_dev_questions.jsonl (bench/RESULTS.md): questions far from
# every chunk of the docs (pip, pandas, the weather) are declined; the others are answered.
SETTINGS = {"min_similarity": 0.495, "reader_threshold": -5.9347}
QUESTIONS = [
    "How do I catch several exceptions in one except clause?",
    "What does the yield keyword do in a function?",
    "How are default argument values evaluated?",
]


def ingest(client: Client) -> None:
    docs = list(python_docs())
    bar = tqdm(total=len(docs), unit="doc", desc="ingesting Python docs", dynamic_ncols=True)
    chunks, start = 0, time.perf_counter()
    for ack in client.ingest(COLLECTION, docs):
        chunks += ack.chunk_count
        bar.set_postfix(chunks=chunks, chunks_per_s=f"{chunks / (time.perf_counter() - start):.1f}", refresh=False)
        bar.update(1)
    bar.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="demo-data")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--http-port", type=int, default=8080, help="the console and the OpenAI-compatible API")
    parser.add_argument(
        "--keep-serving",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the server up after the demo (default: when run from a terminal)",
    )
    parser.add_argument("--model", default=None, help="generator checkpoint (default: the bundled model)")
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args(argv)

    model = args.model or default_model()
    print(f"starting pqrag server (data dir {args.data_dir}, generator {model or 'none'}) ...", flush=True)
    extra = ("--model", model) if model else ("--no-generator",)
    extra += ("--http-port", str(args.http_port))
    try:
        proc, target = start_server_process(args.data_dir, args.port, quiet=False, extra_args=extra)
        http_url = read_http_url(proc)
    except RuntimeError as exc:
        raise SystemExit(f"{exc}\ntry other ports: make demo PORT=50052 HTTP_PORT=8081") from None
    try:
        with Client(target, timeout=600) as client:
            client.wait_ready()
            names = [c.name for c in client.list_collections()]
            if COLLECTION not in names:
                client.create_collection(COLLECTION, **SETTINGS)
                ingest(client)
            info = client.get_collection(COLLECTION)
            p, t = info.tuning.params, info.tuning
            index = (
                f"{p.kind} m={p.m} nbits={p.nbits}, recall@10 {t.recall:.3f} measured, {t.bytes_per_vector:.0f} B/vector"
                if info.index_state == "trained"
                else "exact search until the index has tuned and trained itself"
            )
            print(
                f"\ncollection {COLLECTION}: {info.document_count} documents, {info.chunk_count} chunks, "
                f"index {info.index_state} ({index})\n"
            )
            for q in QUESTIONS[: 1 if model else len(QUESTIONS)]:
                if model:
                    print(f"Q: {q}\nA: ", end="", flush=True)
                    print_answer(client.ask_stream(COLLECTION, q, num_passages=3, max_tokens=args.max_tokens))
                    print()
                    continue
                resp = client.search_raw(COLLECTION, q, k=3)
                print(f"Q: {q}   ({resp.embed_ms + resp.search_ms:.0f} ms)")
                for i, h in enumerate(resp.hits, 1):
                    snippet = " ".join(h.text.split())[:160]
                    print(f"  [{i}] {h.score:.3f} {h.document_id} chars {h.start}-{h.end}: {snippet}...")
                print()
        port = target.rsplit(":", 1)[-1]
        print("Ask your own (while a server runs):")
        s = f"--server localhost:{port}"
        if model:
            print(f'  .venv/bin/pqrag ask "what does the yield statement do?" --collection {COLLECTION} {s}')
            print(f"  .venv/bin/pqrag chat --collection {COLLECTION} {s}")
        print(f'  .venv/bin/pqrag search "what does the yield statement do?" --collection {COLLECTION} {s}')
        print(f"  .venv/bin/pqrag ingest ./my-notes --collection notes --create {s}")
        console = http_url.replace("127.0.0.1", "localhost") + "/"
        print(f"\nWeb console: {console}   (OpenAI-compatible API: {console}v1)")
        if model:
            body = {
                "messages": [{"role": "user", "content": "what does the yield statement do?"}],
                "rag": {"collection": COLLECTION},
            }
            print(f"  curl {console}v1/chat/completions -H 'content-type: application/json' -d '{json.dumps(body)}'")
        keep = sys.stdin.isatty() if args.keep_serving is None else args.keep_serving
        if keep:
            print(f"\nserver running on {target} (gRPC) and {console} (HTTP); press Ctrl-C to stop")
            proc.wait()
        else:
            print(f"\n(start a server with `.venv/bin/pqrag serve --data-dir {args.data_dir}`)")
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
