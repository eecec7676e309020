"""The reader's trainer: answer spans located through whitespace changes, window targets that decode to the
answer (or [CLS] where the window misses it), the threshold choice, and a tiny end-to-end run whose directory
loads."""

from __future__ import annotations

import json
import math

from rag.reader import Reader, ReaderConfig, load_tokenizer
from rag.train_reader import Example, _locate, choose_threshold, main, windows
from tests.rag.conftest import squad_fixture


def test_locate_follows_collapsed_whitespace():
    text = "One  two\n three.   The answer is here, and more."
    start = text.index("answer is")
    flat = "One two three. The answer is here, and more."
    assert _locate(text, start, "answer is") == (flat.index("answer is"), flat.index("answer is") + 9)
    assert _locate("a b a b", 4, "a b") == (4, 7)  # the occurrence at the annotated start, not the first one
    assert _locate("abc", 0, "zzz") is None


def test_window_targets_decode_to_the_answer():
    rc = ReaderConfig(max_length=48, stride=16)
    tok = load_tokenizer(rc)
    context = " ".join(f"word{i}" for i in range(60)) + " The Broncos won the title."
    a = context.index("Broncos won")
    items = windows(tok, rc, [Example("Who won?", context, a, a + len("Broncos won"), "g")])
    assert len(items) > 1
    hits = [(ids, s, e) for ids, _, s, e in items if s]
    assert len(hits) >= 1  # the window(s) holding the whole answer point at it ...
    for ids, s, e in hits:
        assert tok.decode(ids[s : e + 1]).lower() == "broncos won"
    assert any(s == e == 0 for _, _, s, e in items)  # ... the others at [CLS]
    none = windows(tok, rc, [Example("Who won?", "Nothing here.", -1, -1, "g")])
    assert [(s, e) for _, _, s, e in none] == [(0, 0)]


class _Scored:
    """Stands in for the reader's scores (a margin and a span text per group)."""

    def __init__(self, rows):
        self.rows = rows

    def scores(self, question, passages):
        return [self.rows[question]]


def test_threshold_maximises_f1_with_declines():
    groups = [("a", ["p"], ["x y"]), ("b", ["p"], ["z"]), ("c", ["p"], []), ("d", ["p"], [])]
    reader = _Scored({"a": (5.0, "x y"), "b": (1.0, "wrong"), "c": (0.5, "q"), "d": (-2.0, "r")})
    th, scores = choose_threshold(reader, groups)
    assert 0.5 < th <= 5.0  # answers a (F1 1), declines b (F1 0 either way), c and d (1 each)
    assert scores["f1"] == 0.75 and scores["declined_unanswerable"] == 1.0
    assert math.isfinite(th)


def test_tiny_run_writes_a_reader_that_loads(tmp_path, capsys):
    (tmp_path / "squad").mkdir()
    squad = squad_fixture(tmp_path / "squad", [f"Article{i}" for i in range(12)])
    out = tmp_path / "reader"
    # Both sources (SQuAD and Python-docs examples) and 2 optimizer steps, kept small: each forward runs the whole
    # encoder, and the long Python-docs passages (in training and in the held-out groups) cost the most. Batches of
    # 4 over a quarter epoch take the same 2 steps as batches of 16 over one.
    args = ["--out", str(out), "--squad", str(squad), "--pydocs", "2", "--limit", "24", "--trained-layers", "1"]
    args += ["--batch-size", "4", "--epochs", "0.25"]
    assert main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] >= 1 and summary["train_examples"] == 24
    assert math.isfinite(summary["final_loss"]) and summary["held_out"]["groups"] >= 1
    reader = Reader.load(out)
    assert reader.cfg.trained_layers == 1 and reader.cfg.null_threshold == summary["null_threshold"]
    assert (out / "metrics.jsonl").read_text().count("\n") == summary["steps"]
