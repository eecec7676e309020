"""Soak test: a mixed load on a real server for minutes, with faults, watching errors, latency, memory and data.

32 clients send searches, answers (Ask), ingestions and deletions at a fixed total rate to one `pqrag serve`
(a subprocess with the bundled generator), while faults are injected: clients that cancel answers mid-stream or
give up after a tiny deadline, slow readers of answers, one large ingestion (5 MB), and a kill -9 of the server
halfway, restarted on the same data dir and port. It reports

- errors by status code (expected: RESOURCE_EXHAUSTED from backpressure, UNAVAILABLE around the restart, the
  injected DEADLINE_EXCEEDED / CANCELLED; anything else, INTERNAL and UNKNOWN above all, is a finding);
- p50/p99 per operation over time (windows), and the server's resident memory over time (it should not grow);
- documents lost: acknowledged, never deleted, and missing (or incomplete) at the end. It must be 0.

    python bench/soak.py                       # 10 minutes (the record in bench/RESULTS.md)
    python bench/soak.py --short               # ~1 minute, to check the harness
    python bench/soak.py --hol                 # Search p99 idle vs. during a concurrent 5 MB ingest (goal: <= 3x)
    python bench/soak.py --hol --short         # the same with a 500 KB document

--json PATH writes everything measured (default bench/out/soak.json or soak_hol.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pqrag.v1 import search_pb2  # noqa: E402
from service.client import Client  # noqa: E402
from service.launcher import start_server_process  # noqa: E402

WORDS = (
    "river mountain violin galaxy protein harbour glacier algebra tulip engine volcano sourdough chess saturn "
    "magma yeast orbit lattice enzyme sonnet compiler fjord meadow quartz"
).split()
EXPECTED = {"RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"}
# Reconnect within a second of the restart (grpc's default backoff grows to two minutes).
RECONNECT = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)]


def sentence(rng: random.Random, n: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def document(rng: random.Random, doc_id: str, sentences: int) -> dict:
    return {"id": doc_id, "text": " ".join(sentence(rng) for _ in range(sentences)), "metadata": {"n": sentences % 5}}


def big_document(doc_id: str, n_bytes: int) -> dict:
    rng = random.Random(7)
    parts, size = [], 0
    while size < n_bytes - 200:
        s = sentence(rng, 16) + ("\n\n" if rng.random() < 0.1 else " ")
        parts.append(s)
        size += len(s)
    return {"id": doc_id, "text": "".join(parts)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Ledger:
    """What the clients were told: acknowledged documents (id -> chunks), deleted ones, and those whose fate a
    failed call left unknown (a delete cut by the kill)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: dict[str, int] = {}
        self.uncertain: set[str] = set()

    def acked(self, doc_id: str, chunks: int) -> None:
        with self.lock:
            self.live[doc_id] = chunks

    def pick(self, rng: random.Random) -> str | None:
        with self.lock:
            if not self.live:
                return None
            doc_id = rng.choice(list(self.live))
            del self.live[doc_id]  # nobody else deletes it meanwhile
            return doc_id

    def settle(self, doc_id: str, chunks: int, deleted: bool | None) -> None:
        with self.lock:
            if deleted is None:
                self.uncertain.add(doc_id)
            elif not deleted:
                self.live[doc_id] = chunks


class Recorder:
    def __init__(self, window_s: float) -> None:
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self.window_s = window_s
        self.latency: dict[tuple[int, str], list[float]] = defaultdict(list)
        self.codes: Counter = Counter()
        self.details: Counter = Counter()  # (code, the start of its message): what the errors said
        self.errors_over_time: Counter = Counter()  # (window, code)
        self.rss: list[tuple[float, int, float]] = []  # (t, pid, MB)

    def record(self, op: str, start: float, code: str, details: str = "") -> None:
        with self.lock:
            self.codes[(op, code)] += 1
            if code != "OK":
                self.details[(code, details[:300])] += 1
                self.errors_over_time[(int((start - self.t0) // self.window_s), code)] += 1
            if code == "OK":
                window = int((start - self.t0) // self.window_s)
                self.latency[(window, op)].append((time.monotonic() - start) * 1e3)


def run_op(op: str, c: Client, rng: random.Random, ledger: Ledger, rec: Recorder, client_id: int, n: list) -> str:
    """Run one operation and record its outcome; returns its status code name."""
    start = time.monotonic()
    code = "OK"
    try:
        if op == "search":
            c.search("soak", sentence(rng, 6), k=5, filter={"n": rng.randrange(5)} if rng.random() < 0.3 else None)
        elif op == "ask":
            events = c.ask_stream("soak", sentence(rng, 8) + "?", max_tokens=24)
            for _ in events:
                pass
        elif op == "cancel":  # a client that goes away mid-answer
            events = c.ask_stream("soak", sentence(rng, 8) + "?", max_tokens=64)
            next(events)
            events.cancel()
            code = "CANCELLED(by client)"
        elif op == "slow":  # a slow reader
            for _ in c.ask_stream("soak", sentence(rng, 8) + "?", max_tokens=16):
                time.sleep(0.05)
        elif op == "deadline":
            c.searcher.Search(search_pb2.SearchRequest(collection="soak", text="lava"), timeout=0.001)
        elif op == "ingest":
            docs = []
            for _ in range(rng.randint(1, 4)):
                n[0] += 1
                docs.append(document(rng, f"c{client_id}-{n[0]}", rng.randint(1, 30)))
            for ack in c.ingest("soak", docs):
                ledger.acked(ack.document_id, ack.chunk_count)
        elif op == "delete":
            doc_id = ledger.pick(rng)
            if doc_id is None:
                return
            try:
                c.delete_document("soak", doc_id)
                ledger.settle(doc_id, 0, True)
            except grpc.RpcError as exc:
                gone = exc.code() == grpc.StatusCode.NOT_FOUND  # deleted by a call cut by the kill, then retried
                ledger.settle(doc_id, 0, True if gone else None)
                raise
    except grpc.RpcError as exc:
        code, details = exc.code().name if exc.code() else "UNKNOWN", exc.details() or ""
        rec.record(op, start, code, details)
        return code
    except StopIteration:
        code = "EMPTY_STREAM"
    rec.record(op, start, code)
    return code


# Codes a well-behaved client backs off on (the server is down or shedding load), as gRPC's retry policy does:
# exponential with full jitter, 50 ms doubling to at most 2 s, reset by a success.
BACKOFF_CODES = {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}
BACKOFF_BASE_S, BACKOFF_MAX_S = 0.05, 2.0


MIX = [("search", 55), ("ask", 10), ("ingest", 18), ("delete", 8), ("cancel", 3), ("slow", 3), ("deadline", 3)]


def client_loop(i: int, target: str, rate: float, stop: threading.Event, ledger: Ledger, rec: Recorder) -> None:
    rng = random.Random(1000 + i)
    ops, weights = zip(*MIX)
    interval = 1.0 / rate
    next_t = time.monotonic() + rng.uniform(0, interval)
    n = [0]
    failures = 0
    with Client(target, timeout=30, channel_options=RECONNECT) as c:
        while not stop.is_set():
            delay = next_t - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            next_t += interval  # a fixed rate: a slow call does not slow the schedule (it catches up)
            code = run_op(rng.choices(ops, weights)[0], c, rng, ledger, rec, i, n)
            if code in BACKOFF_CODES:
                failures += 1
                stop.wait(rng.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**failures)))
                next_t = max(next_t, time.monotonic())  # no burst to catch up after backing off
            else:
                failures = 0


def soak(args) -> dict:
    data = Path(tempfile.mkdtemp(prefix="pqrag-soak-")) / "data"
    port = free_port()
    server_args = ("--max-waiting-requests", "16", "--grace-period", "10")
    proc, target = start_server_process(data, port=port, extra_args=server_args)
    rec = Recorder(args.window)
    ledger = Ledger()
    with Client(target, timeout=120) as c:
        c.wait_ready()
        c.create_collection("soak")
        rng = random.Random(0)
        for ack in c.ingest("soak", [document(rng, f"seed-{i}", rng.randint(1, 20)) for i in range(200)]):
            ledger.acked(ack.document_id, ack.chunk_count)
    stop = threading.Event()
    state = {"proc": proc}

    def sample_rss() -> None:
        while not stop.is_set():
            pid = state["proc"].pid
            value = rss_mb(pid)
            if value is not None:
                rec.rss.append((time.monotonic() - rec.t0, pid, value))
            stop.wait(5)

    def large_ingest() -> None:
        stop.wait(args.duration * 0.05)
        with Client(target, timeout=600) as c:
            start = time.monotonic()
            try:
                for ack in c.ingest("soak", [big_document("large", args.large_bytes)]):
                    ledger.acked(ack.document_id, ack.chunk_count)
                rec.record("large_ingest", start, "OK")
            except grpc.RpcError as exc:
                rec.record("large_ingest", start, exc.code().name)

    def kill_and_restart() -> None:
        stop.wait(args.duration / 2)
        if stop.is_set():
            return
        os.kill(state["proc"].pid, signal.SIGKILL)
        state["proc"].wait()
        rec.record("kill_9", time.monotonic(), "OK")
        start = time.monotonic()
        state["proc"], _ = start_server_process(data, port=port, extra_args=server_args)
        rec.record("restart", start, "OK")

    rec.t0 = time.monotonic()  # the load starts now (the setup above loaded the models)
    threads = [threading.Thread(target=sample_rss), threading.Thread(target=large_ingest)]
    threads += [threading.Thread(target=kill_and_restart)]
    threads += [
        threading.Thread(target=client_loop, args=(i, target, args.rate / args.clients, stop, ledger, rec))
        for i in range(args.clients)
    ]
    for t in threads:
        t.start()
    time.sleep(args.duration)
    stop.set()
    for t in threads:
        t.join(600)

    lost, incomplete = [], []
    with Client(target, timeout=120) as c:
        for doc_id, chunks in sorted(ledger.live.items()):
            try:
                d = c.get_document("soak", doc_id, include_chunks=True)
                if d.chunk_count != chunks or len(d.chunks) != chunks:
                    incomplete.append(doc_id)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    lost.append(doc_id)
                else:
                    raise
        stats = c.get_collection("soak")
    state["proc"].send_signal(signal.SIGTERM)
    exit_status = state["proc"].wait(120)
    return report(args, rec, ledger, lost, incomplete, stats, exit_status)


def report(args, rec: Recorder, ledger: Ledger, lost, incomplete, stats, exit_status) -> dict:
    windows = sorted({w for w, _ in rec.latency})
    ops = sorted({op for _, op in rec.latency})
    series = {
        op: [
            {
                "t_s": w * args.window,
                "n": len(rec.latency[(w, op)]),
                "p50_ms": float(np.percentile(rec.latency[(w, op)], 50)),
                "p99_ms": float(np.percentile(rec.latency[(w, op)], 99)),
            }
            for w in windows
            if rec.latency.get((w, op))
        ]
        for op in ops
    }
    codes: dict[str, dict[str, int]] = defaultdict(dict)
    for (op, code), n in sorted(rec.codes.items()):
        codes[op][code] = n
    unexpected = {
        f"{op}:{code}": n
        for (op, code), n in rec.codes.items()
        if code not in EXPECTED and code != "OK" and not code.startswith("CANCELLED(")
    }
    rss = [{"t_s": round(t, 1), "pid": pid, "rss_mb": round(v, 1)} for t, pid, v in rec.rss]
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "duration_s": args.duration,
        "clients": args.clients,
        "rate_per_s": args.rate,
        "large_ingest_bytes": args.large_bytes,
        "codes": codes,
        "unexpected_errors": unexpected,
        "error_messages": [{"code": c, "message": m, "n": n} for (c, m), n in rec.details.most_common(20)],
        "errors_over_time": [
            {"t_s": w * args.window, "code": c, "n": n} for (w, c), n in sorted(rec.errors_over_time.items())
        ],
        "latency_over_time": series,
        "rss_over_time": rss,
        "documents_acknowledged_live": len(ledger.live),
        "documents_uncertain": len(ledger.uncertain),
        "documents_lost": len(lost),
        "documents_incomplete": len(incomplete),
        "collection": {"documents": stats.document_count, "chunks": stats.chunk_count},
        "server_exit_status_after_sigterm": exit_status,
    }
    print(f"soak: {args.duration:.0f} s, {args.clients} clients, {args.rate:g} ops/s; {out['machine']}")
    print("\nstatus codes by operation:")
    for op, by_code in codes.items():
        print(f"  {op:14} " + ", ".join(f"{c} {n}" for c, n in by_code.items()))
    print(f"\np99 (ms) per {args.window:.0f} s window (kill -9 at {args.duration / 2:.0f} s):")
    print("  " + f"{'t (s)':>6} " + " ".join(f"{op:>9}" for op in ops))
    for w in windows:
        cells = []
        for op in ops:
            ms = rec.latency.get((w, op))
            cells.append(f"{np.percentile(ms, 99):9.0f}" if ms else f"{'-':>9}")
        print(f"  {w * args.window:6.0f} " + " ".join(cells))
    for n, pid in enumerate(dict.fromkeys(r["pid"] for r in rss)):
        values = [r["rss_mb"] for r in rss if r["pid"] == pid]
        label = "before the kill" if n == 0 else "after the restart"
        print(f"server RSS (MB) {label}: first {values[0]:.0f}, max {max(values):.0f}, last {values[-1]:.0f}")
    print(
        f"documents: {len(ledger.live)} acknowledged and live, {len(lost)} LOST, {len(incomplete)} incomplete, "
        f"{len(ledger.uncertain)} deletes cut by the kill (uncertain); unexpected errors: {unexpected or 'none'}; "
        f"exit status after SIGTERM: {exit_status}"
    )
    return out


def hol(args) -> dict:
    """Search p99 idle, then while a large document is ingested (embedded in bulk batches, in the bulk pool)."""
    data = Path(tempfile.mkdtemp(prefix="pqrag-hol-")) / "data"
    proc, target = start_server_process(data, extra_args=("--no-generator",))
    rng = random.Random(0)
    try:
        with Client(target, timeout=600) as c:
            c.wait_ready()
            c.create_collection("hol")
            list(c.ingest("hol", [document(rng, f"d{i}", rng.randint(1, 20)) for i in range(500)]))
            queries = [sentence(rng, 6) for _ in range(50)]
            for q in queries[:10]:
                c.search("hol", q, k=10)  # warm

            def searches(until) -> list[float]:
                ms = []
                i = 0
                while not until():
                    t = time.perf_counter()
                    c.search("hol", queries[i % len(queries)], k=10)
                    ms.append((time.perf_counter() - t) * 1e3)
                    i += 1
                    time.sleep(0.02)
                return ms

            t_end = time.monotonic() + args.idle_s
            idle = searches(lambda: time.monotonic() > t_end)
            done = threading.Event()
            ingest_s: list[float] = []

            def ingest() -> None:
                t = time.perf_counter()
                with Client(target, timeout=3600) as ic:
                    acks = list(ic.ingest("hol", [big_document("large", args.large_bytes)]))
                ingest_s.append(time.perf_counter() - t)
                ingest_s.append(acks[0].chunk_count)
                done.set()

            threading.Thread(target=ingest).start()
            time.sleep(1.0)  # the document is transferred and chunked; its embedding has begun
            busy = searches(done.is_set)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    idle_p99, busy_p99 = float(np.percentile(idle, 99)), float(np.percentile(busy, 99))
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "document_bytes": args.large_bytes,
        "document_chunks": int(ingest_s[1]),
        "ingest_s": round(ingest_s[0], 1),
        "idle": {"n": len(idle), "p50_ms": float(np.percentile(idle, 50)), "p99_ms": idle_p99},
        "during_ingest": {"n": len(busy), "p50_ms": float(np.percentile(busy, 50)), "p99_ms": busy_p99},
        "p99_ratio": busy_p99 / idle_p99,
        "goal": "p99 during the ingest <= 3x idle p99",
    }
    print(
        f"Search p99 idle {idle_p99:.1f} ms (n={len(idle)}), during a {args.large_bytes / 1e6:.1f} MB ingest "
        f"({out['document_chunks']} chunks, {out['ingest_s']} s) {busy_p99:.1f} ms (n={len(busy)}): "
        f"{out['p99_ratio']:.2f}x (goal <= 3x)"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true", help="about a minute (a check of the harness, not a record)")
    ap.add_argument("--hol", action="store_true", help="Search p99 idle vs. during a large ingest")
    ap.add_argument("--duration", type=float, help="seconds of load (default 600; --short 60)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--rate", type=float, help="operations per second, all clients together (default 40; --short 20)")
    ap.add_argument("--window", type=float, help="seconds per latency window (default 30; --short 10)")
    ap.add_argument("--large-bytes", type=int, help="the large document (default 5 MB; --short 500 KB)")
    ap.add_argument("--idle-s", type=float, default=30.0, help="--hol: seconds of idle searches")
    ap.add_argument("--json", help="where to write the results")
    args = ap.parse_args()
    args.duration = args.duration or (60.0 if args.short else 600.0)
    args.rate = args.rate or (8.0 if args.short else 40.0)
    args.window = args.window or (10.0 if args.short else 30.0)
    args.large_bytes = args.large_bytes or (500_000 if args.short else 5 * 1024 * 1024 - 4096)
    if args.short and args.hol:
        args.idle_s = min(args.idle_s, 10.0)
    out = hol(args) if args.hol else soak(args)
    path = Path(args.json or ROOT / "bench" / "out" / ("soak_hol.json" if args.hol else "soak.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {path}")
    if not args.hol and (out["documents_lost"] or out["documents_incomplete"] or out["unexpected_errors"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
