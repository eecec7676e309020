"""The `pqrag` CLI against a real server: --json output for scripts, errors on stderr."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from service.cli import main
from tests.service.conftest import FIXTURES


def run_json(capsys, *argv):
    assert main(list(argv) + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_end_to_end(server, capsys):
    s = ["--server", server.target]
    created = run_json(capsys, "collections", "create", "docs", *s)
    assert created["name"] == "docs" and created["dimension"] == 384

    summary = run_json(capsys, "ingest", str(FIXTURES / "docs"), "--collection", "docs", *s)
    # planets.json, volcanoes.txt, sourdough.md, chess.html and three jsonl records; the .pdf is skipped.
    assert summary["documents"] == 7 and summary["chunks"] >= 7
    assert any(p.endswith("ignored.pdf") for p in summary["skipped"])

    hits = run_json(capsys, "search", "which planet has rings?", "--collection", "docs", "-k", "3", *s)
    assert len(hits) == 3
    assert set(hits[0]) >= {"doc_id", "chunk_id", "score", "text", "metadata"}
    assert hits[0]["doc_id"] == "planets" and hits[0]["metadata"]["topic"] == "astronomy"

    hits = run_json(
        capsys, "search", "animal", "--collection", "docs", "-k", "5", "--filter", '{"topic": {"$in": ["biology"]}}', *s
    )
    assert {h["doc_id"] for h in hits} == {"octopus", "honeybee", "penguin"}

    # HTML is reduced to its text: no markup, no script or style contents.
    html_hits = run_json(capsys, "search", "Sicilian Defence", "--collection", "docs", "-k", "1", *s)
    assert "<p>" not in html_hits[0]["text"] and "var x" not in html_hits[0]["text"]

    listing = run_json(capsys, "collections", "list", *s)
    assert [c["name"] for c in listing] == ["docs"] and listing[0]["documents"] == 7

    doc = run_json(capsys, "documents", "get", "octopus", "--collection", "docs", "--chunks", *s)
    assert doc["id"] == "octopus" and doc["chunks"][0]["start"] == 0
    run_json(capsys, "documents", "delete", "octopus", "--collection", "docs", *s)
    assert run_json(capsys, "collections", "get", "docs", *s)["documents"] == 6
    assert run_json(capsys, "health", *s) == {"status": "SERVING"}


def test_cli_errors_name_the_code(server, capsys):
    rc = main(["search", "x", "--collection", "missing", "--server", server.target])
    err = capsys.readouterr().err
    assert rc == 1 and "NOT_FOUND" in err and "missing" in err
    rc = main(["search", "x", "--collection", "missing", "-k", "5000", "--server", server.target])
    assert rc == 1


def test_console_script_installed():
    exe = shutil.which("pqrag") or str(__import__("pathlib").Path(sys.executable).parent / "pqrag")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for cmd in ("serve", "collections", "ingest", "search"):
        assert cmd in out.stdout
