"""`pqrag keys`: create, list and revoke the API keys of a data dir (service.auth), and generate one for a secret.

    pqrag keys create --data-dir data --role write --collections docs,notes --name ingest-bot --expires 30d
    pqrag keys list --data-dir data [--json]
    pqrag keys revoke ingest-bot --data-dir data      # a running server stops accepting it within about a second
    pqrag keys generate                               # a fresh key on stdout, stored nowhere (serve --admin-key-file)

`create` prints the key once, alone on the last line of stdout (`KEY=$(pqrag keys create ... | tail -n 1)`); only
its salted hash is stored. These commands work on the data dir's files directly, so they run beside a server (or
without one). Each change is appended to the data dir's audit log.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from typing import Any

from common.errors import PqragError
from service.audit import append_audit
from service.auth import KeyStore, Role, generate_key, parse_duration


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def cmd_keys(args: argparse.Namespace) -> int:
    if args.action == "generate":
        print(generate_key())
        return 0
    keys = KeyStore(args.data_dir)
    who = f"cli:{getpass.getuser()}"
    try:
        if args.action == "create":
            scope = [c.strip() for c in args.collections.split(",") if c.strip()] if args.collections else None
            expires = parse_duration(args.expires) if args.expires else None
            record, key = keys.create(
                Role.parse(args.role), scope, args.name, expires, requests_per_s=args.rps, tokens_per_s=args.tps
            )
            append_audit(
                args.data_dir,
                key=who,
                method="keys.create",
                outcome="OK",
                detail={"name": record.name, "role": record.role, "collections": record.collections},
            )
            scope_text = ", ".join(record.collections) if record.collections is not None else "all collections"
            print(f"created key {record.name!r}: role {record.role}, {scope_text}, expires {_when(record.expires)}")
            print("the key is shown once; store it now (clients: --api-key or $PQRAG_API_KEY):")
            print(key)
        elif args.action == "list":
            now, used = time.time(), keys.last_used()
            rows: list[dict[str, Any]] = [
                {
                    "name": r.name,
                    "role": r.role,
                    "collections": r.collections,
                    "state": r.state(now),
                    "created": r.created,
                    "last_used": used.get(r.name),
                    "expires": r.expires,
                    "revoked": r.revoked,
                }
                for r in keys.records()
            ]
            if args.json:
                json.dump(rows, sys.stdout, indent=2)
                sys.stdout.write("\n")
            else:
                print(f"{'NAME':24} {'ROLE':6} {'STATE':8} {'CREATED':19}  {'LAST USED':19}  COLLECTIONS")
                for r in rows:
                    scope = ",".join(r["collections"]) if r["collections"] is not None else "*"
                    print(
                        f"{r['name']:24} {r['role']:6} {r['state']:8} {_when(r['created']):19}  "
                        f"{_when(r['last_used']):19}  {scope}"
                    )
        else:  # revoke
            record = keys.revoke(args.name)
            append_audit(args.data_dir, key=who, method="keys.revoke", outcome="OK", detail={"name": record.name})
            print(f"revoked key {record.name!r}; a running server refuses it within a few seconds")
    except PqragError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def add_keys_parser(sub: Any, default_data_dir: str) -> None:
    """`pqrag keys ...` on the top-level subparsers `sub`."""
    p = sub.add_parser("keys", help="create, list or revoke API keys (in the data dir; a running server sees changes)")
    ksub = p.add_subparsers(dest="action", required=True)
    c = ksub.add_parser("create", help="a new key, printed once on the last line")
    c.add_argument("--role", required=True, choices=[r.label for r in Role], help="read < write < admin")
    c.add_argument("--collections", help="comma-separated collections the key may use (default: all)")
    c.add_argument("--name", help="a name for list/revoke and the audit log (default: key-<id>)")
    c.add_argument("--expires", help="lifetime, e.g. 90m, 12h, 30d, 2w (default: never)")
    c.add_argument("--rps", type=float, help="this key's requests per second (default: the server's --rate-limit-rps)")
    c.add_argument("--tps", type=float, help="this key's generated tokens per second (default: --rate-limit-tps)")
    ksub.add_parser("list", help="name, role, state, created, last used, collections (never the key)").add_argument(
        "--json", action="store_true"
    )
    ksub.add_parser("revoke", help="revoke a key by name").add_argument("name")
    ksub.add_parser("generate", help="print a fresh key without storing it (for serve --admin-key-file)")
    for sp in ksub.choices.values():
        sp.add_argument("--data-dir", default=default_data_dir, help="the server's data dir (default %(default)s)")
    p.set_defaults(fn=cmd_keys)
