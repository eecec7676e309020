"""The command line's security and reliability flags, apart from cli.py: what `pqrag serve` takes (TLS, keys,
safe defaults, limits, shutdown) and what every client command takes (API key, TLS).

    add_serve_flags(serve_parser, ServerConfig())      ->  serve_config(args): ServerConfig fields
    add_client_flags(client_parser)                    ->  client_options(args): Client keyword arguments

Client flags default to the environment: $PQRAG_API_KEY (or $PQRAG_API_KEY_FILE, a file holding it: a Docker
secret), $PQRAG_TLS_CA, $PQRAG_TLS_CERT, $PQRAG_TLS_KEY. A key on the command line is visible to other users in
`ps`: prefer the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from service.config import ServerConfig

GROUNDINGS = ("free", "quote", "extract")  # rag.request.GROUNDINGS, without importing torch into the CLI


def reader_dir(value: str) -> str | None:
    """--reader's value: the reader's directory, or None for `--reader none` (no extract answers)."""
    return None if value.lower() == "none" else value


def speculative_config(value: str) -> dict[str, Any]:
    """--speculative-config's JSON, checked now (argparse reports the error) rather than after loading the model."""
    from common.errors import InvalidArgumentError
    from llm.speculative_config import SpeculativeConfig

    try:
        return dataclasses.asdict(SpeculativeConfig.parse(value))  # type: ignore[arg-type]
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_serve_flags(p: argparse.ArgumentParser, defaults: ServerConfig) -> None:
    p.add_argument(
        "--speculative-config",
        type=speculative_config,
        help='speculative decoding, as vLLM\'s: \'{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": '
        '4, "prompt_lookup_min": 2, "disable_by_batch_size": 2}\' (default: off)',
    )
    p.add_argument(
        "--grounding",
        choices=GROUNDINGS,
        help="how answers are decoded when a request (or its collection) does not say: quote (verbatim quotes of the "
        "passages, each cited), extract (the reader's best span of the passages, cited; no generator needed) or free "
        "(default: the model's: extract for the bundled model (quote without a reader), free for other checkpoints)",
    )
    p.add_argument(
        "--reader",
        type=reader_dir,
        default=defaults.reader,
        metavar="DIR",
        help="the extractive reader of extract answers (reader_config.json + reader.safetensors), or `none` to serve "
        "without one (default: the bundled models/pqrag-reader)",
    )
    g = p.add_argument_group("security")
    g.add_argument(
        "--insecure",
        action="store_true",
        help="serve a non-loopback --host with no API key in the data dir (refused otherwise); warns at start",
    )
    g.add_argument("--no-reflection", action="store_true", help="do not register gRPC server reflection")
    g.add_argument("--tls-cert", metavar="PEM", help="server certificate chain: TLS for gRPC, HTTP and /metrics")
    g.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    g.add_argument("--tls-client-ca", metavar="PEM", help="CA of client certificates: mutual TLS")
    g.add_argument(
        "--admin-key-file",
        metavar="FILE",
        help="register the key in FILE (made by `pqrag keys generate`; e.g. a Docker secret) as the admin key "
        "'bootstrap'",
    )
    g.add_argument(
        "--metrics-host",
        default=ServerConfig.metrics_host,
        help="address of /metrics, which has no auth (default %(default)s; 0.0.0.0 in a container)",
    )
    g.add_argument(
        "--models-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory of sentence-transformers models that collections may name as their embedder "
        "(repeatable; the bundled all-MiniLM-L6-v2 is always there)",
    )
    g = p.add_argument_group("backpressure and shutdown")
    g.add_argument("--max-waiting-requests", type=int, metavar="N", help="answers waiting to start, at most")
    g.add_argument("--max-waiting-tokens", type=int, metavar="N", help="their prompt + answer tokens, at most")
    g.add_argument("--rate-limit-rps", type=float, metavar="R", help="requests per second per API key (default: none)")
    g.add_argument(
        "--rate-limit-tps", type=float, metavar="R", help="generated tokens per second per API key (default: none)"
    )
    g.add_argument(
        "--grace-period",
        type=float,
        default=defaults.grace_period,
        metavar="S",
        help="seconds in-flight calls get to finish after SIGTERM (default %(default)s)",
    )
    g.add_argument(
        "--bulk-workers",
        type=int,
        default=defaults.bulk_workers,
        help="threads for ingestion, apart from --workers (default %(default)s)",
    )


def serve_config(args: argparse.Namespace) -> dict[str, Any]:
    """The ServerConfig fields the flags of add_serve_flags set."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("error: --tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise SystemExit("error: --tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    for flag in ("max_waiting_requests", "max_waiting_tokens", "bulk_workers"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise SystemExit(f"error: --{flag.replace('_', '-')} must be at least 1")
    return {
        "insecure": args.insecure,
        "reflection": not args.no_reflection,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_client_ca": args.tls_client_ca,
        "admin_key_file": args.admin_key_file,
        "metrics_host": args.metrics_host,
        "models_dirs": tuple(args.models_dir),
        "max_waiting_requests": args.max_waiting_requests,
        "max_waiting_tokens": args.max_waiting_tokens,
        "rate_limit_rps": args.rate_limit_rps,
        "rate_limit_tps": args.rate_limit_tps,
        "grace_period": args.grace_period,
        "bulk_workers": args.bulk_workers,
        "grounding": args.grounding,
        "reader": args.reader,
    }


def add_client_flags(p: argparse.ArgumentParser, suppress: bool = False) -> None:
    """--api-key and the TLS flags; suppress: defaults left to the parent parser (sub-actions repeat the flags)."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    p.add_argument("--api-key", default=default(None), help="API key (default $PQRAG_API_KEY or $PQRAG_API_KEY_FILE)")
    p.add_argument("--tls", action="store_true", default=default(False), help="TLS with the system's CA roots")
    p.add_argument("--tls-ca", metavar="PEM", default=default(None), help="the server's CA (default $PQRAG_TLS_CA)")
    p.add_argument("--tls-cert", metavar="PEM", default=default(None), help="client certificate for mutual TLS")
    p.add_argument("--tls-key", metavar="PEM", default=default(None), help="the client certificate's key")


def api_key_from_env() -> str | None:
    key = os.environ.get("PQRAG_API_KEY")
    path = os.environ.get("PQRAG_API_KEY_FILE")
    if not key and path:
        try:
            with open(path) as f:
                key = f.read().strip()
        except OSError as exc:
            raise SystemExit(f"error: cannot read $PQRAG_API_KEY_FILE {path}: {exc.strerror}") from None
    return key or None


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """Client keyword arguments from the flags, else the environment."""
    return {
        "api_key": getattr(args, "api_key", None) or api_key_from_env(),
        "tls": getattr(args, "tls", False),
        "tls_ca": getattr(args, "tls_ca", None) or os.environ.get("PQRAG_TLS_CA") or None,
        "tls_cert": getattr(args, "tls_cert", None) or os.environ.get("PQRAG_TLS_CERT") or None,
        "tls_key": getattr(args, "tls_key", None) or os.environ.get("PQRAG_TLS_KEY") or None,
    }
