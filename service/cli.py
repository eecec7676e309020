"""`pqrag` command line: the server and a client for every RPC.

    pqrag serve --data-dir data --port 50051
    pqrag collections create docs
    pqrag collections update docs --reader-threshold -1.5
    pqrag ingest ./notes ./README.md --collection docs
    pqrag search "how do I open a file?" --collection docs -k 5 --json

Client commands take --server HOST:PORT (default localhost:50051, or $PQRAG_SERVER), --api-key (or
$PQRAG_API_KEY), --tls-ca/--tls-cert/--tls-key (service.cli_options) and --json (machine-readable output on
stdout). Errors go to stderr with the gRPC status code; exit status 1. `pqrag keys` manages API keys (keys_cli.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from service.cli_options import GROUNDINGS, add_client_flags, add_serve_flags, client_options, serve_config
from service.cli_retrieval import (
    add_collection_actions,
    add_mode_flags,
    index_spec,
    mode_options,
    print_collection,
    print_hits,
    print_updated,
    update_settings,
)
from service.config import ServerConfig
from service.keys_cli import add_keys_parser
from service.models_cli import add_models_parser

DEFAULT_DATA_DIR = os.environ.get("PQRAG_DATA_DIR", ServerConfig.data_dir)
DEFAULT_SERVER = os.environ.get("PQRAG_SERVER", "localhost:50051")
# The generator `pqrag serve` loads unless told otherwise: $PQRAG_MODEL, else the default model committed in the
# repository (trained by `make default-model` with the project's own trainer on the Python documentation).
BUNDLED_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "pqrag-small")


def default_model() -> str | None:
    path = os.environ.get("PQRAG_MODEL") or BUNDLED_MODEL
    return path if os.path.exists(os.path.join(path, "config.json")) else None


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _client(args):
    from service.client import Client

    return Client(args.server, timeout=args.timeout, **client_options(args))


# --- serve ---------------------------------------------------------------------------------------


def cmd_serve(args) -> int:
    import asyncio

    # Before torch loads: the engine, embedding and search threads share the cores, and OpenMP threads spinning
    # while they wait starve the others (a loaded 2-core VM: 136 s -> 15 s for one engine workload, issue 14).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from service.server import serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model = None if args.no_generator else (args.model or default_model())
    if not args.no_generator and model is None:
        logging.getLogger("pqrag").warning(
            "no generator: pass --model DIR (or set PQRAG_MODEL); serving retrieval (and extract answers) only"
        )
    engine = {
        "max_num_seqs": args.max_num_seqs,
        "kv_cache_memory": args.kv_cache_mb * 1024 * 1024 if args.kv_cache_mb else None,
        "speculative_config": args.speculative_config,  # checked by cli_options.speculative_config
    }
    config = ServerConfig(
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        workers=args.workers,
        metrics_port=args.metrics_port,
        http_port=args.http_port,
        served_model_name=args.served_model_name,
        max_message_bytes=args.max_message_mb * 1024 * 1024,
        model=model,
        device=args.device,
        dtype=args.dtype,
        engine={k: v for k, v in engine.items() if v is not None},  # unset: the engine's defaults
        **serve_config(args),
    )

    def ready(server) -> None:
        # One parseable line on stdout so scripts (and `make demo`) can find a port chosen with --port 0; a second
        # one for the HTTP port (service.launcher reads both).
        print(f"pqrag listening on {config.host}:{server.port}", flush=True)
        if server.http is not None:
            print(f"pqrag http listening on {server.http.url}", flush=True)

    from service.gate import UnsafeConfigError

    try:
        return asyncio.run(serve(config, ready=ready))
    except UnsafeConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# --- collections ---------------------------------------------------------------------------------


def cmd_collections(args) -> int:
    from service.client import collection_to_dict

    with _client(args) as c:
        if args.action == "create":
            spec = index_spec(args)
            out = collection_to_dict(c.create_collection(args.name, embedder=args.embedder or "", **spec))
            _print_json(out) if args.json else print(f"created collection {out['name']} (dimension {out['dimension']})")
        elif args.action == "get":
            out = collection_to_dict(c.get_collection(args.name))
            _print_json(out) if args.json else print_collection(out)
        elif args.action == "list":
            colls = [collection_to_dict(x) for x in c.list_collections()]
            if args.json:
                _print_json(colls)
            else:
                print(f"{'NAME':24} {'DOCS':>8} {'CHUNKS':>8} {'DIM':>5}  INDEX")
                for x in colls:
                    print(
                        f"{x['name']:24} {x['documents']:>8} {x['chunks']:>8} {x['dimension']:>5}  {x['index_state']}"
                    )
        elif args.action == "update":
            out = collection_to_dict(c.update_collection(args.name, **update_settings(args)))
            _print_json(out) if args.json else print_updated(out)
        elif args.action == "delete":
            c.delete_collection(args.name)
            _print_json({"deleted": args.name}) if args.json else print(f"deleted collection {args.name}")
    return 0


# --- ingest --------------------------------------------------------------------------------------


def cmd_ingest(args) -> int:
    import grpc
    from tqdm import tqdm

    from retrieval.loaders import iter_files, load_file

    skipped: list[str] = []
    files = list(iter_files(args.paths))
    # The bar counts files, but acks come per document: remember which file each document came from and move
    # the bar when that file's last document is acknowledged (a .jsonl file holds many documents).
    file_of: dict[str, int] = {}

    def documents():
        for i, (path, root) in enumerate(files, start=1):
            for doc in load_file(path, root, skipped.append):
                file_of[doc.id] = i
                yield doc

    with _client(args) as c:
        if args.create:
            try:
                c.create_collection(args.collection)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
        bar = tqdm(total=len(files), unit="file", disable=args.json or args.quiet, dynamic_ncols=True, file=sys.stderr)
        chunks, ids, replaced, start = 0, [], 0, time.perf_counter()
        try:
            for ack in c.ingest(args.collection, documents()):
                chunks += ack.chunk_count
                replaced += int(ack.replaced)
                ids.append(ack.document_id)
                elapsed = max(time.perf_counter() - start, 1e-9)
                done = file_of.pop(ack.document_id, bar.n + 1) - 1  # files before this one are complete
                bar.set_postfix(docs=len(ids), chunks=chunks, chunks_per_s=f"{chunks / elapsed:.1f}", refresh=False)
                bar.update(max(done - bar.n, 0))
            bar.update(len(files) - bar.n)
        finally:
            bar.close()
        elapsed = time.perf_counter() - start
    summary = {
        "collection": args.collection,
        "documents": len(ids),
        "chunks": chunks,
        "replaced": replaced,
        "seconds": round(elapsed, 3),
        "chunks_per_s": round(chunks / max(elapsed, 1e-9), 2),
        "skipped": skipped,
    }
    if args.json:
        _print_json(summary)
    else:
        print(
            f"ingested {len(ids)} documents ({chunks} chunks, {replaced} replaced) into {args.collection} "
            f"in {elapsed:.1f}s ({summary['chunks_per_s']} chunks/s)"
        )
        for path in skipped:
            # The loader reports unsupported files as their bare path and other skips as "path (reason)".
            reason = "" if path.endswith(")") else " (unsupported file type)"
            print(f"skipped {path}{reason}", file=sys.stderr)
    return 0


# --- search and documents ------------------------------------------------------------------------


def cmd_search(args) -> int:
    filt = None
    if args.filter:
        try:
            filt = json.loads(args.filter)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"error: --filter is not valid JSON: {exc}") from None
    with _client(args) as c:
        resp = c.search_raw(
            args.collection,
            args.query,
            k=args.k,
            filter=filt,
            nprobe=args.nprobe,
            rerank=False if args.no_rerank else None,
            **mode_options(args),
        )
    from service.client import hit_to_dict

    hits = [hit_to_dict(h) for h in resp.hits]
    if args.json:
        _print_json(hits)
        return 0
    print_hits(hits)
    print(f"({len(hits)} hits; embed {resp.embed_ms:.1f} ms, search {resp.search_ms:.1f} ms)")
    return 0


def cmd_documents(args) -> int:
    from service.structs import struct_to_dict

    with _client(args) as c:
        if args.action == "get":
            d = c.get_document(args.collection, args.document_id, include_chunks=args.chunks)
            out = {
                "id": d.id,
                "source": d.source,
                "metadata": struct_to_dict(d.metadata),
                "chunk_count": d.chunk_count,
                "text": d.text,
                "chunks": [{"id": ch.id, "start": ch.start, "end": ch.end, "text": ch.text} for ch in d.chunks],
            }
            if args.json:
                _print_json(out)
            else:
                print(f"{d.id} ({d.chunk_count} chunks) {d.source}\n{d.text}")
        else:
            c.delete_document(args.collection, args.document_id)
            _print_json({"deleted": args.document_id}) if args.json else print(f"deleted {args.document_id}")
    return 0


# --- ask and chat --------------------------------------------------------------------------------


def _gen_params(args) -> dict[str, Any]:
    return {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "sample_top_k": args.sample_top_k,
        "grounding": args.grounding,
    }


def _filter(args) -> dict | None:
    return json.loads(args.filter) if args.filter else None


def cmd_ask(args) -> int:
    from service.client import collect_answer, print_answer

    with _client(args) as c:
        events = c.ask_stream(
            args.collection,
            args.question,
            num_passages=args.passages,
            filter=_filter(args),
            **mode_options(args),
            **_gen_params(args),
        )
        if args.json:
            _print_json(collect_answer(events))
        else:
            print_answer(events)
    return 0


def cmd_chat(args) -> int:
    """An interactive conversation; the history goes with every question. /reset forgets it, /quit ends."""
    from service.client import collect_answer, print_answer

    messages: list[dict[str, str]] = []
    print("pqrag chat: ask about the documents; /reset clears the history, /quit (or Ctrl-D) ends.", file=sys.stderr)
    with _client(args) as c:
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                print(file=sys.stderr)
                return 0
            if not line:
                continue
            if line in ("/quit", "/exit"):
                return 0
            if line == "/reset":
                messages.clear()
                continue
            messages.append({"role": "user", "content": line})
            events = c.chat_stream(
                args.collection,
                messages,
                num_passages=args.passages,
                filter=_filter(args),
                **mode_options(args),
                **_gen_params(args),
            )
            if args.json:
                result = collect_answer(events)
                _print_json(result)
            else:
                sys.stdout.write("pqrag> ")
                result = print_answer(events)
            messages.append({"role": "assistant", "content": result["answer"]})


def cmd_train(args) -> int:
    from llm.train import main as train_main

    return train_main(args.train_args)


def cmd_health(args) -> int:
    with _client(args) as c:
        status = c.health()
    _print_json({"status": status}) if args.json else print(status)
    return 0 if status == "SERVING" else 1


# --- parser --------------------------------------------------------------------------------------


class _RenamedFlag(argparse.Action):
    """A flag of ask/chat that was renamed: exits with a message naming the new flags."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, argparse.SUPPRESS, nargs="?", **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(
            f"{option_string} was renamed: use --passages N for the passages retrieved, "
            "or --sample-top-k N to sample from the N most likely tokens"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pqrag", description="pqrag: product-quantized retrieval over gRPC")
    sub = parser.add_subparsers(dest="command", required=True)

    def client_cmd(name: str, help: str, fn: Callable) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--server", default=DEFAULT_SERVER, help="HOST:PORT of the server (default %(default)s)")
        p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        p.add_argument("--timeout", type=float, default=600.0, help="seconds per RPC")
        add_client_flags(p)
        p.set_defaults(fn=fn)
        return p

    defaults = ServerConfig()
    p = sub.add_parser("serve", help="run the gRPC server")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="SQLite store and indexes (default %(default)s)")
    p.add_argument("--host", default=defaults.host, help="address to bind; 0.0.0.0 for all interfaces")
    p.add_argument("--port", type=int, default=defaults.port, help="0 picks a free port")
    p.add_argument("--workers", type=int, default=defaults.workers, help="threads for embedding, search and storage")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    p.add_argument(
        "--http-port",
        type=int,
        default=defaults.http_port,
        help="also serve HTTP on this port: the OpenAI-compatible API (/v1), REST, /health, /metrics and the web "
        "console at / (0 picks a free port)",
    )
    p.add_argument(
        "--served-model-name", help="the generator's name in the OpenAI API (default: the model directory's name)"
    )
    p.add_argument(
        "--max-message-mb", type=int, default=defaults.max_message_bytes >> 20, help="largest request accepted"
    )
    p.add_argument("--log-level", default="info")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--model",
        help="generator checkpoint directory (config.json, *.safetensors, tokenizer.json); "
        "default $PQRAG_MODEL or the bundled models/pqrag-small",
    )
    g.add_argument("--no-generator", action="store_true", help="serve retrieval (and extract answers) only")
    p.add_argument("--device", help="generator device (default: cuda when available, else cpu)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="auto (default): bf16 if fast")
    p.add_argument("--kv-cache-mb", type=int, help="KV-cache memory for the generator (default: the engine's sizing)")
    p.add_argument("--max-num-seqs", type=int, help="sequences the generator decodes together (default: the engine's)")
    add_serve_flags(p, defaults)
    p.set_defaults(fn=cmd_serve)
    add_keys_parser(sub, DEFAULT_DATA_DIR)
    add_models_parser(sub)

    p = client_cmd("collections", "create, get, list, update or delete collections", cmd_collections)
    csub = p.add_subparsers(dest="action", required=True)
    add_collection_actions(csub)
    # Let the shared client flags also follow the action (`pqrag collections list --json`).
    for sp in csub.choices.values():
        sp.add_argument("--server", default=argparse.SUPPRESS)
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
        add_client_flags(sp, suppress=True)

    p = client_cmd("ingest", "ingest files and folders (.txt .md .html .pdf .json .jsonl)", cmd_ingest)
    p.add_argument("paths", nargs="+")
    p.add_argument("--collection", "-c", required=True)
    p.add_argument("--create", action="store_true", help="create the collection if it does not exist")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    p = client_cmd("search", "search a collection", cmd_search)
    p.add_argument("query")
    p.add_argument("--collection", "-c", required=True)
    p.add_argument("--top-k", "-k", dest="k", type=int, help="number of hits, 1..1000 (default: the server's)")
    p.add_argument("--filter", help='metadata filter as JSON, e.g. \'{"lang": "en", "tag": {"$in": ["a", "b"]}}\'')
    p.add_argument("--nprobe", type=int, default=0)
    p.add_argument("--no-rerank", action="store_true")
    add_mode_flags(p)

    p = client_cmd("documents", "get or delete one document", cmd_documents)
    dsub = p.add_subparsers(dest="action", required=True)
    for action in ("get", "delete"):
        d = dsub.add_parser(action)
        d.add_argument("document_id")
        d.add_argument("--collection", "-c", required=True)
        d.add_argument("--server", default=argparse.SUPPRESS)
        d.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
        add_client_flags(d, suppress=True)
        if action == "get":
            d.add_argument("--chunks", action="store_true", help="include chunks with their character spans")

    for name, help, fn in (
        ("ask", "answer a question from a collection, streaming", cmd_ask),
        ("chat", "an interactive conversation over a collection", cmd_chat),
    ):
        p = client_cmd(name, help, fn)
        if name == "ask":
            p.add_argument("question")
        p.add_argument("--collection", "-c", required=True)
        p.add_argument(
            "--passages", type=int, metavar="N", help="passages retrieved for the context (1..50, default 5)"
        )
        p.add_argument("--filter", help="metadata filter as JSON, as for search")
        add_mode_flags(p)
        p.add_argument("--max-tokens", type=int, default=None, help="answer length limit (default 256)")
        p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default)")
        p.add_argument("--top-p", type=float, default=None)
        p.add_argument("--sample-top-k", type=int, metavar="N", help="sample from the N most likely tokens")
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--grounding", choices=GROUNDINGS, help="quote / extract: only cited verbatim passage spans")
        for flag in ("--top-k", "-k", "--top-k-sampling"):  # ambiguous names of the two flags above, refused
            p.add_argument(flag, action=_RenamedFlag, help=argparse.SUPPRESS)

    client_cmd("health", "check the server's grpc.health.v1 status", cmd_health)

    # Everything after `train` goes to llm.train (`pqrag train --help` shows its options): prefix_chars without "-"
    # keeps this subparser from claiming the trainer's flags.
    p = sub.add_parser(
        "train", help="train the MoE generator (same options as python -m llm.train)", add_help=False, prefix_chars="\0"
    )
    p.add_argument("train_args", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        import grpc

        if isinstance(exc, grpc.RpcError):
            code = exc.code().name if exc.code() else "UNKNOWN"
            print(f"error: {code}: {exc.details()}", file=sys.stderr)
            if code == "UNAUTHENTICATED":
                print("(pass an API key: --api-key KEY or $PQRAG_API_KEY; see `pqrag keys create`)", file=sys.stderr)
            if code == "UNAVAILABLE":
                print(f"(is the server running at {args.server}? start one with `pqrag serve`)", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
