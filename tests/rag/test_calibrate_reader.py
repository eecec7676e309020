"""Calibrating the reader's threshold for a collection: the threshold choice (balanced over the two kinds of
question, away from the margins), the question file's forms and errors, the decisions it reports, and a run over a
real collection (SQLite, the index, the default embedder) with the bundled reader, as the CLI does it."""

from __future__ import annotations

import json

import pytest

from common.errors import InvalidArgumentError
from rag.calibrate_reader import (
    LabelledQuestion,
    Scored,
    calibrate,
    choose_settings,
    choose_threshold,
    decisions,
    main,
    read_questions,
)
from tests.service.conftest import RAG_DOCS

INF = float("inf")


def test_a_gap_between_the_kinds_is_split_in_the_middle():
    assert choose_threshold([1.0, 2.0, 3.0], [-2.0, -1.0]) == pytest.approx(0.0)  # halfway between -1 and 1


def test_each_kind_weighs_as_a_share_of_itself():
    # Ten answerable questions at -1 and one unanswerable at 0: counting questions would answer everything (10 of
    # 11 right); as shares, declining the one unanswerable is worth as much as answering the ten, and the nine
    # answerable ones above it keep the threshold between.
    answerable = [-1.0] + [1.0] * 9
    th = choose_threshold(answerable, [0.0])
    assert 0.0 < th < 1.0
    assert choose_threshold([1.0] * 10, [-1.0, 2.0]) < 1.0  # an unanswerable one scoring high cannot be declined


def test_overlapping_kinds_and_degenerate_input():
    th = choose_threshold([0.0, 2.0, 4.0], [1.0, 3.0])
    right = sum(m >= th for m in (0.0, 2.0, 4.0)) / 3 + sum(m < th for m in (1.0, 3.0)) / 2
    best = max(
        sum(m >= t for m in (0.0, 2.0, 4.0)) / 3 + sum(m < t for m in (1.0, 3.0)) / 2
        for t in (-1, 0.5, 1.5, 2.5, 3.5, 5)
    )
    assert right == pytest.approx(best)
    assert choose_threshold([-INF], [-INF]) == 0.0  # nothing was read: no margin to place it by
    assert choose_threshold([1.0, 2.0], []) < 1.0  # only answerable questions: answer them all
    assert choose_threshold([], [1.0, 2.0]) > 2.0  # only unanswerable ones: decline them all


def test_read_questions_takes_both_forms_and_names_bad_lines(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"question": "what does yield do?", "topic": "pydoc-yield"}\n\n'
        '{"question": "capital of France?", "topic": null}\n'
        '{"question": "who won?", "answerable": true}\n'
    )
    assert read_questions(path) == [
        LabelledQuestion("what does yield do?", True, "pydoc-yield"),
        LabelledQuestion("capital of France?", False, None),
        LabelledQuestion("who won?", True, None),
    ]
    for bad, says in (
        ('{"question": "q"}', "answerable"),
        ('{"question": "", "answerable": true}', "question"),
        ('{"question": "q", "answerable": "yes"}', "answerable"),
        ("not json", "not JSON"),
        ("", "no questions"),
    ):
        path.write_text(f'{{"question": "ok", "answerable": true}}\n{bad}\n' if bad else "\n")
        with pytest.raises(InvalidArgumentError, match=says):
            read_questions(path)


def test_decisions_count_answers_declines_and_the_topic_quoted():
    scored = [
        Scored(LabelledQuestion("a", True, "d1"), 0.5, (0.5, -3.0), ("d1", "d2")),
        Scored(LabelledQuestion("b", True, "d2"), -0.5, (-1.0, -0.5), ("d1", "d2")),  # quoted from d1: -1 > -0.5 - 2
        Scored(LabelledQuestion("c", True, "d1"), -2.0, (-2.0,), ("d1",)),
        Scored(LabelledQuestion("d", False), -1.5, (-1.5,), ("d3",)),
    ]
    row = decisions(scored, -1.0, rank_penalty=2.0)
    assert row == {
        "threshold": -1.0,
        "min_similarity": None,
        "answered": 2 / 3,
        "declined": 1.0,
        "right": 3 / 4,
        "quoted_topic": 1 / 3,
    }
    assert decisions(scored, -10.0, rank_penalty=0.0)["quoted_topic"] == 3 / 3


def question(answerable: bool, similarity: float | None, margin: float) -> Scored:
    return Scored(LabelledQuestion("q", answerable), margin, (margin,), ("d",), similarity)


def test_a_similarity_cut_is_chosen_where_it_declines_what_margins_cannot():
    # The margins do not separate (the unanswerable ones score as high as the answerable), their distance does.
    scored = [question(True, s, m) for s, m in ((0.6, 0.0), (0.5, -3.0), (0.7, 1.0))]
    scored += [question(False, s, m) for s, m in ((0.2, 0.5), (0.3, 2.0))]
    cut, threshold = choose_settings(scored)
    assert cut == pytest.approx(0.4)  # halfway between the farthest answerable (0.5) and the nearest other (0.3)
    assert threshold < -3.0  # past the cut, every question is answerable: answer them all
    row = decisions(scored, threshold, rank_penalty=0.0, min_similarity=cut)
    assert (row["answered"], row["declined"], row["min_similarity"]) == (1.0, 1.0, 0.4)
    assert decisions(scored, threshold, rank_penalty=0.0)["declined"] == 0.0  # without the cut: none declined


def test_no_cut_where_the_margins_decide_alone_or_nothing_measured_a_distance():
    # Far and near questions of both kinds, separated by their margins: a cut cannot help, so none is set.
    scored = [question(True, s, 1.0) for s in (0.2, 0.8)] + [question(False, s, -1.0) for s in (0.3, 0.7)]
    cut, threshold = choose_settings(scored)
    assert cut is None and -1.0 < threshold < 1.0
    lexical = [question(True, None, 1.0), question(False, None, -1.0)]  # a lexical collection: no distances
    assert choose_settings(lexical)[0] is None
    assert question(False, None, 5.0).passes(0.9)  # a question with no distance is never cut


def test_the_cut_and_the_threshold_are_chosen_together():
    # The cut declines one unanswerable question; the threshold the other; each alone leaves one wrong.
    scored = [question(True, s, m) for s, m in ((0.6, 1.0), (0.7, 2.0))]
    scored += [question(False, 0.2, 3.0), question(False, 0.8, -1.0)]
    cut, threshold = choose_settings(scored)
    assert 0.2 < cut < 0.6 and -1.0 < threshold < 1.0
    assert decisions(scored, threshold, rank_penalty=0.0, min_similarity=cut)["right"] == 1.0


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    from retrieval import Collections

    data_dir = tmp_path_factory.mktemp("calibrate") / "data"
    colls = Collections(data_dir, device="cpu")
    colls.create("kb")
    colls.get("kb").ingest(RAG_DOCS)
    colls.close()
    return data_dir


QUESTIONS = [
    {"question": "What makes sourdough bread rise?", "topic": "bread"},
    {"question": "What are Saturn's rings made of?", "topic": "saturn"},
    {"question": "How does the Sicilian Defence answer 1.e4?", "topic": "chess"},
    {"question": "Who wrote the Odyssey?", "topic": None},
    {"question": "What is the tallest building in Dubai?", "topic": None},
]


def test_calibrate_over_a_real_collection_and_the_cli(kb, reader, tmp_path):
    from retrieval import Collections

    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    with Collections(kb, device="cpu") as colls:
        result = calibrate(reader, colls.get("kb"), read_questions(path), num_passages=3, progress=False)
    assert (result["questions"], result["answerable"]) == (5, 3)
    before, after = result["before"], result["after"]
    assert before["threshold"] == round(reader.cfg.null_threshold, 4)
    assert after["threshold"] == result["reader_threshold"]

    def balanced(row):
        return row["answered"] + row["declined"]

    assert balanced(after) >= balanced(before)  # the chosen one decides at least as well as the reader's own
    assert 0.0 <= after["quoted_topic"] <= after["answered"]


def test_the_cli_prints_json_and_refuses_a_bad_file(kb, tmp_path, capsys):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS[:2]) + '{"question": "no label"}\n')
    assert main(["--data-dir", str(kb), "--collection", "kb", "--questions", str(path), "--json"]) == 2
    assert "q.jsonl:3" in capsys.readouterr().err
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    assert main(["--data-dir", str(kb), "--collection", "kb", "--questions", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"questions", "answerable", "reader_threshold", "min_similarity", "before", "after", "written"}
    assert out["written"] is False


def test_write_stores_the_calibrated_threshold_in_the_collection(kb, tmp_path, capsys):
    from retrieval import Collections

    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    base = ["--data-dir", str(kb), "--collection", "kb", "--questions", str(path)]
    assert main(base) == 0  # without --write: the hint, nothing stored
    said = capsys.readouterr().out
    assert "pqrag collections update kb --reader-threshold" in said and "--write" in said
    assert ("--no-min-similarity" in said) or ("--min-similarity " in said)
    with Collections(kb, device="cpu") as colls:
        assert colls.get("kb").config.reader_threshold is None
    assert main([*base, "--write", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["written"] is True
    with Collections(kb, device="cpu") as colls:  # stored: a server opening the data dir uses them
        config = colls.get("kb").config
        assert (config.reader_threshold, config.min_similarity) == (out["reader_threshold"], out["min_similarity"])
        colls.update("kb", reader_threshold=None, min_similarity=None)  # the other tests read kb unset
    assert main([*base, "--write"]) == 0
    wrote = f"wrote reader_threshold {out['reader_threshold']}, min_similarity {out['min_similarity']} to kb"
    assert wrote in capsys.readouterr().out
    with Collections(kb, device="cpu") as colls:
        assert colls.get("kb").config.reader_threshold == out["reader_threshold"]
        colls.update("kb", reader_threshold=None, min_similarity=None)
