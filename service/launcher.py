"""Start `pqrag serve` as a child process and learn its address (demo, benchmarks, crash tests)."""

from __future__ import annotations

import subprocess
import sys


def start_server_process(
    data_dir: str,
    port: int = 0,
    host: str = "127.0.0.1",
    extra_args: tuple[str, ...] = (),
    quiet: bool = True,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """Returns (process, "HOST:PORT") once the server listens; raises RuntimeError if it exits instead.

    The server prints one "pqrag listening on HOST:PORT" line on stdout when it is ready, which also
    reports the port it chose when port is 0. env: the child's environment (None: this one's).
    """
    cmd = [
        sys.executable,
        "-m",
        "service.cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--host",
        host,
        "--port",
        str(port),
        *extra_args,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if quiet else None, text=True, env=env
    )
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        proc.wait()
        raise RuntimeError(
            f"pqrag serve exited with code {proc.returncode} before listening "
            f"(is {host}:{port} in use?); command: {' '.join(cmd)}"
        )
    return proc, line.strip().rsplit(" ", 1)[-1]


def read_http_url(proc: subprocess.Popen) -> str:
    """The HTTP base URL of a server started with --http-port: the second line it prints ("pqrag http listening
    on URL"), right after the gRPC one that start_server_process read."""
    line = proc.stdout.readline()
    if "http listening on" not in line:
        raise RuntimeError(f"pqrag serve printed {line.strip()!r} where the HTTP address was expected")
    return line.strip().rsplit(" ", 1)[-1]
