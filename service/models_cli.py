"""`pqrag models inspect DIR [--json]`: what a checkpoint directory holds, read without loading its weights
(llm.checkpoint_info): family, layers, experts and top-k, total and active parameters, dtype, context length, the
tokenizer's kind and whether it has a chat template."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_models_parser(sub: Any) -> None:
    """`pqrag models inspect ...` on the top-level subparsers `sub`."""
    p = sub.add_parser("models", help="inspect generator checkpoints (no server needed)")
    msub = p.add_subparsers(dest="action", required=True)
    i = msub.add_parser("inspect", help="family, shape, parameters, dtype, context, tokenizer and chat template")
    i.add_argument("dir", help="checkpoint directory (config.json, *.safetensors, tokenizer.json, ...)")
    i.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(fn=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from common.errors import PqragError
    from llm.checkpoint_info import describe, render

    try:
        info = describe(args.dir)
    except PqragError as exc:
        print(f"pqrag models inspect: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0
