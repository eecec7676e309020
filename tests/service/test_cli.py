"""The `pqrag` CLI against a real server: --json output for scripts, errors on stderr, ask and chat against a
server with a generator, the renamed ask/chat flags, and `pqrag serve`'s configuration."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

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
    # planets.json, volcanoes.txt, sourdough.md, chess.html and three jsonl records; the broken .pdf is skipped.
    assert summary["documents"] == 7 and summary["chunks"] >= 7
    assert any(p.startswith("ignored.pdf (not a readable PDF") for p in summary["skipped"])

    hits = run_json(capsys, "search", "which planet has rings?", "--collection", "docs", "-k", "3", *s)
    assert len(hits) == 3
    assert run_json(capsys, "search", "which planet has rings?", "--collection", "docs", "--top-k", "2", *s) == hits[:2]
    assert len(run_json(capsys, "search", "rings", "--collection", "docs", *s)) == min(10, summary["chunks"])  # k unset
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


def test_cli_ask_json_and_streaming(rag_server, capsys):
    s = ["--server", rag_server.target]
    assert (
        main(
            [
                "ask",
                "Why do volcanoes erupt?",
                "--collection",
                "kb",
                "--passages",
                "2",
                "--max-tokens",
                "6",
                "--json",
                *s,
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"answer", "citations", "final"}
    assert out["citations"][0]["doc_id"] == "volcano" and out["final"]["completion_tokens"] <= 6
    assert len(out["citations"]) <= 2
    assert main(["ask", "Why do volcanoes erupt?", "--collection", "kb", "--max-tokens", "6", *s]) == 0
    text = capsys.readouterr().out
    assert out["answer"] in text and "sources:" in text and "[1] geo.txt" in text


def test_cli_chat_keeps_the_history(rag_server, capsys, monkeypatch):
    import io

    sent = []
    from service import client as client_mod

    real = client_mod.Client.chat_stream

    def spy(self, collection, messages, **kw):
        sent.append([dict(m) for m in messages])
        return real(self, collection, messages, **kw)

    monkeypatch.setattr(client_mod.Client, "chat_stream", spy)  # records what the CLI sends; the RPC is real
    monkeypatch.setattr("sys.stdin", io.StringIO("Tell me about chess.\nWhat does it answer 1.e4 with?\n/quit\n"))
    assert main(["chat", "--collection", "kb", "--max-tokens", "4", "--server", rag_server.target]) == 0
    assert [len(m) for m in sent] == [1, 3]
    assert [m["role"] for m in sent[1]] == ["user", "assistant", "user"]
    assert "sources:" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["ask", "What is lava?"], ["chat"]])
@pytest.mark.parametrize("flag", ["--top-k", "-k", "--top-k-sampling"])
def test_renamed_ask_and_chat_flags_exit_naming_the_new_ones(command, flag, capsys):
    with pytest.raises(SystemExit) as e:  # before any connection: no server needed
        main([*command, "--collection", "kb", flag, "3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{flag} was renamed" in err
    assert "--passages N" in err and "--sample-top-k N" in err


def test_passages_and_sample_top_k_reach_the_request(monkeypatch):
    from service import client as client_mod

    sent = {}

    def spy(self, collection, question, **kw):
        sent.update(kw, collection=collection, question=question)
        return iter(())

    monkeypatch.setattr(client_mod.Client, "ask_stream", spy)
    assert main(["ask", "q?", "-c", "kb", "--passages", "3", "--sample-top-k", "7", "--temperature", "0.5"]) == 0
    assert sent["num_passages"] == 3 and sent["sample_top_k"] == 7 and sent["temperature"] == 0.5
    req = client_mod.generation_params(**{k: v for k, v in sent.items() if k in ("sample_top_k", "temperature")})
    assert req.top_k == 7 and req.temperature == 0.5  # sampling's top-k is GenerationParams.top_k


@pytest.fixture
def serve_configs(monkeypatch):
    """`pqrag serve` with service.server.serve replaced: the ServerConfigs it was called with."""
    import service.server

    configs = []

    async def fake_serve(config, ready=None):
        configs.append(config)
        return 0

    monkeypatch.setattr(service.server, "serve", fake_serve)
    return configs


def test_serve_leaves_unset_engine_options_to_the_engine(serve_configs, tmp_path):
    configs = serve_configs
    base = ["serve", "--data-dir", str(tmp_path), "--no-generator"]
    assert main(base) == 0
    assert main([*base, "--max-num-seqs", "8", "--kv-cache-mb", "64"]) == 0
    assert configs[0].engine == {} and configs[0].port == 50051 and configs[0].workers == 4
    assert configs[1].engine == {"max_num_seqs": 8, "kv_cache_memory": 64 << 20}
    assert configs[0].http_port is None and configs[0].served_model_name is None  # HTTP is off unless asked for
    assert main([*base, "--http-port", "8080", "--served-model-name", "pqrag"]) == 0
    assert configs[2].http_port == 8080 and configs[2].served_model_name == "pqrag"


def test_serve_dtype_flag_and_thread_policy(serve_configs, tmp_path, capsys, monkeypatch):
    configs = serve_configs
    base = ["serve", "--data-dir", str(tmp_path), "--no-generator"]
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert main(base) == 0 and main([*base, "--dtype", "bfloat16"]) == 0
    assert configs[0].dtype is None and configs[1].dtype == "bfloat16"  # None: common.device.default_dtype
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # sleeping OpenMP waits: the server shares its cores
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--dtype", "bf16"])
    assert exit_.value.code == 2 and "bfloat16" in capsys.readouterr().err


def test_serve_speculative_config_flag(serve_configs, tmp_path, capsys):
    configs = serve_configs
    base = ["serve", "--data-dir", str(tmp_path), "--no-generator"]
    spec = '{"method": "ngram", "num_speculative_tokens": 4}'
    assert main([*base, "--speculative-config", spec]) == 0
    assert configs[0].engine["speculative_config"]["num_speculative_tokens"] == 4
    for bad, says in [('{"method": "eagle"}', "unknown method"), ('{"k": 4}', "unknown key"), ("{", "JSON")]:
        with pytest.raises(SystemExit) as exit_:  # argparse: before anything is loaded
            main([*base, "--speculative-config", bad])
        assert exit_.value.code == 2 and says in capsys.readouterr().err
    assert len(configs) == 1


def test_ingest_reads_pdfs_page_by_page_and_reports_a_scan(server, capsys, tmp_path):
    from tests.pdf_fixtures import make_pdf

    (tmp_path / "report.pdf").write_bytes(make_pdf(["Revenue grew in spring.", "", "Costs fell in autumn."]))
    (tmp_path / "scan.pdf").write_bytes(make_pdf([""]))
    (tmp_path / "notes.txt").write_text("Plain notes after the scan.")
    summary = run_json(capsys, "ingest", str(tmp_path), "--collection", "pdf", "--create", "--server", server.target)
    assert summary["documents"] == 3  # two pages with text and the notes, over IngestStream
    assert [s for s in summary["skipped"] if s.startswith("scan.pdf (no extractable text")]
    hits = run_json(capsys, "search", "costs in autumn", "--collection", "pdf", "-k", "1", "--server", server.target)
    assert hits[0]["doc_id"] == "report.pdf#page=3" and hits[0]["metadata"]["page"] == 3


def test_cli_search_modes_and_the_tuning_report(server, capsys):
    s = ["--server", server.target]
    created = run_json(
        capsys,
        "collections",
        "create",
        "kb",
        "--mode",
        "lexical",
        "--recall-target",
        "0.9",
        "--min-train-size",
        "150",
        *s,
    )
    assert created["default_search_mode"] == "lexical" and created["index"]["recall_target"] == 0.9
    assert created["index"]["min_train_size"] == 150 and created["tuning"] is None
    run_json(capsys, "ingest", str(FIXTURES / "docs"), "--collection", "kb", *s)
    hits = run_json(capsys, "search", "Sicilian Defence", "--collection", "kb", *s)  # the default: lexical
    assert hits[0]["doc_id"] == "chess.html" and hits[0]["lexical_rank"] == 1 and hits[0]["dense_rank"] is None
    hits = run_json(capsys, "search", "Sicilian Defence", "-c", "kb", "--mode", "hybrid", "--rrf-k", "1", *s)
    assert hits[0]["score"] == pytest.approx(1 / (1 + hits[0]["dense_rank"]) + 1 / (1 + hits[0]["lexical_rank"]))
    assert main(["search", "Sicilian Defence", "-c", "kb", "--mode", "dense", "-k", "2", *s]) == 0
    out = capsys.readouterr().out
    assert "dense #1" in out and "lexical #" not in out and "(2 hits;" in out
    assert main(["collections", "get", "kb", *s]) == 0
    out = capsys.readouterr().out
    assert "default_search_mode  lexical" in out and "none yet (exact search" in out  # 7 documents: no training


def test_ask_and_chat_modes_reach_the_request(monkeypatch):
    from service import client as client_mod

    sent = {}

    def spy(self, collection, question, **kw):
        sent.update(kw)
        return iter(())

    monkeypatch.setattr(client_mod.Client, "ask_stream", spy)
    assert main(["ask", "q?", "-c", "kb", "--mode", "lexical"]) == 0
    assert sent["mode"] == "lexical" and sent["fusion"] is None
    assert main(["ask", "q?", "-c", "kb", "--mode", "hybrid", "--alpha", "0.4", "--candidates", "30"]) == 0
    assert sent["mode"] == "hybrid" and sent["fusion"] == {"alpha": 0.4, "candidates": 30}
    with pytest.raises(SystemExit):
        main(["ask", "q?", "-c", "kb", "--mode", "sparse"])


def test_serve_reader_flag(serve_configs, tmp_path):
    from service.config import BUNDLED_READER

    base = ["serve", "--data-dir", str(tmp_path), "--no-generator"]
    assert main(base) == 0 and main([*base, "--reader", str(tmp_path)]) == 0 and main([*base, "--reader", "none"]) == 0
    assert [c.reader for c in serve_configs] == [BUNDLED_READER, str(tmp_path), None]  # default: the bundled one
    assert main([*base, "--grounding", "extract"]) == 0 and serve_configs[3].grounding == "extract"


def test_cli_collections_create_reader_threshold_and_min_similarity(server, capsys):
    s = ["--server", server.target]
    created = run_json(
        capsys,
        "collections",
        "create",
        "cal",
        "--grounding",
        "extract",
        "--reader-threshold",
        "-1.5",
        "--min-similarity",
        "0.25",
        *s,
    )
    assert (created["reader_threshold"], created["min_similarity"]) == (-1.5, 0.25)
    plain = run_json(capsys, "collections", "create", "plain", *s)
    assert plain["reader_threshold"] is None and plain["min_similarity"] is None  # the reader's own; no cut
    listing = {c["name"]: c for c in run_json(capsys, "collections", "list", *s)}
    assert listing["cal"]["reader_threshold"] == -1.5 and listing["plain"]["reader_threshold"] is None
    assert listing["cal"]["min_similarity"] == 0.25 and listing["plain"]["min_similarity"] is None
    assert main(["collections", "get", "cal", *s]) == 0
    said = capsys.readouterr().out
    assert "reader_threshold     -1.5" in said and "min_similarity       0.25" in said
    assert main(["collections", "get", "plain", *s]) == 0
    said = capsys.readouterr().out
    assert "reader_threshold     unset (the reader's own)" in said and "min_similarity       unset (no cut)" in said
    assert main(["collections", "create", "bad", "--reader-threshold", "nan", *s]) == 1  # refused by the server
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "reader_threshold must be a finite number" in err
    # "=": to argparse "-inf" is an option, not a negative number
    assert main(["collections", "create", "bad", "--min-similarity=-inf", *s]) == 1
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "min_similarity must be a finite number" in err
    for flag in ("--reader-threshold", "--min-similarity"):
        with pytest.raises(SystemExit):  # not a number: argparse's error
            main(["collections", "create", "bad", flag, "high", *s])
    said = _help("collections", "create")
    assert "calibrate_reader" in said and "--min-similarity X" in said and "(default: no cut)" in said


def test_cli_collections_update(server, capsys):
    s = ["--server", server.target]
    run_json(capsys, "collections", "create", "kb", "--reader-threshold", "-1.5", *s)
    out = run_json(capsys, "collections", "update", "kb", "--reader-threshold", "2.5", "--grounding", "extract", *s)
    assert (out["reader_threshold"], out["default_grounding"], out["default_search_mode"]) == (2.5, "extract", "hybrid")
    out = run_json(capsys, "collections", "update", "kb", "--search-mode", "lexical", *s)
    assert (out["reader_threshold"], out["default_grounding"], out["default_search_mode"]) == (
        2.5,
        "extract",
        "lexical",
    )
    assert run_json(capsys, "collections", "get", "kb", *s) == out
    assert out["min_similarity"] is None
    out = run_json(capsys, "collections", "update", "kb", "--min-similarity", "-0.5", *s)  # a negative value
    assert (out["min_similarity"], out["reader_threshold"], out["default_search_mode"]) == (-0.5, 2.5, "lexical")
    assert run_json(capsys, "collections", "get", "kb", *s) == out
    assert main(["collections", "update", "kb", "--min-similarity", "0.3", *s]) == 0
    said = capsys.readouterr().out
    assert said.strip() == (
        "updated collection kb: search mode lexical, grounding extract, reader threshold 2.5, min similarity 0.3"
    )
    assert (
        main(["collections", "update", "kb", "--no-reader-threshold", "--no-grounding", "--no-min-similarity", *s]) == 0
    )
    said = capsys.readouterr().out
    assert said.strip() == (
        "updated collection kb: search mode lexical, grounding the server's, reader threshold the reader's own, "
        "min similarity none"
    )
    out = run_json(capsys, "collections", "get", "kb", *s)
    assert out["reader_threshold"] is None and out["default_grounding"] is None and out["min_similarity"] is None
    assert main(["collections", "update", "kb", "--reader-threshold", "250", *s]) == 1  # refused by the server
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "reader_threshold must be a finite number" in err
    assert main(["collections", "update", "kb", "--min-similarity", "1e7", *s]) == 1  # likewise
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "min_similarity must be a finite number" in err
    assert run_json(capsys, "collections", "get", "kb", *s)["min_similarity"] is None  # nothing changed
    assert main(["collections", "update", "nope", "--reader-threshold", "1", *s]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="nothing to change"):
        main(["collections", "update", "kb", *s])
    with pytest.raises(SystemExit):  # argparse: one or the other
        main(["collections", "update", "kb", "--reader-threshold", "1", "--no-reader-threshold", *s])
    with pytest.raises(SystemExit):
        main(["collections", "update", "kb", "--min-similarity", "1", "--no-min-similarity", *s])
    said = _help("collections", "update")
    assert "fixed at create" in said and "--no-min-similarity" in said and "minimum similarity" in said


def _help(*argv) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(out.getvalue().split())
