"""The extractive reader: the span search against brute force, answers that are verbatim slices of a passage,
declining below the threshold, long passages read in windows, and its directory's save/load round trip."""

from __future__ import annotations

import pytest
import torch

from rag.reader import Reader, ReaderAnswer, ReaderConfig, best_spans, collapse, decide

PASSAGES = [
    "The Denver Broncos defeated the Carolina Panthers 24-10 to earn their third Super Bowl title.\n"
    "The game was played on February 7, 2016,   at Levi's Stadium in Santa Clara, California.",
    "The yield statement is only used when defining a generator function, and is only used in the body of\n"
    "the generator function. Using yield in a function definition is sufficient to make it a generator.",
    "",
]


def test_collapse():
    assert collapse("  a\n b\t\tc  \n\n d ") == "a b c d"


def test_best_spans_match_brute_force():
    g = torch.Generator().manual_seed(0)
    W, T, L = 4, 23, 5
    start, end = torch.randn(W, T, generator=g), torch.randn(W, T, generator=g)
    context = torch.rand(W, T, generator=g) > 0.3
    context[3] = False  # a window without passage tokens
    score, first, last = best_spans(start, end, context, L)
    for w in range(3):
        best = max(
            (float(start[w, i] + end[w, j]), i, j)
            for i in range(T)
            for j in range(i, min(T, i + L))
            if context[w, i] and context[w, j]
        )
        assert float(score[w]) == pytest.approx(best[0])
        assert (int(first[w]), int(last[w])) == best[1:]
    assert score[3] == float("-inf")


def test_answer_is_a_verbatim_slice_of_the_passage_it_cites(reader):
    for question in ("Who won the Super Bowl?", "Where was the game played?", "what does yield do"):
        found = reader.answer(question, PASSAGES)
        assert found is not None
        assert found.text and found.text in collapse(PASSAGES[found.passage])
        assert max(m for m, _ in reader.scores(question, PASSAGES)) >= reader.cfg.null_threshold
    scores = reader.scores("Where was the game played?", PASSAGES)
    assert len(scores) == len(PASSAGES) and scores[2] == (float("-inf"), "")  # an empty passage: no span


def test_declines_below_the_threshold_and_without_passages(reader):
    assert reader.answer("Who won?", []) is None
    assert reader.answer("Who won?", [""]) is None
    strict = Reader(ReaderConfig(**{**reader.cfg.__dict__, "null_threshold": 1e9}), reader.model, reader.tokenizer)
    assert strict.answer("Who won the Super Bowl?", PASSAGES) is None


def test_decide_answers_when_any_passage_reaches_the_threshold():
    cfg = ReaderConfig(null_threshold=-1.0, rank_penalty=2.0)
    scored = [(-3.0, "first"), (0.5, "second"), (float("-inf"), "")]
    # answerable (passage 2 reaches -1), quoted from retrieval's first: -3 - 0 > 0.5 - 2 is false, so passage 2
    assert decide(scored, cfg) == ReaderAnswer("second", 1, 0.5)
    near = [(-1.5, "first"), (0.2, "second")]  # -1.5 > 0.2 - 2: the first passage, although below the threshold
    assert decide(near, cfg) == ReaderAnswer("first", 0, -1.5)
    assert decide([(-1.5, "first"), (-1.2, "second")], cfg) is None  # none reaches -1
    assert decide([(-1.5, "first"), (-1.2, "second")], cfg, null_threshold=-1.3) == ReaderAnswer("first", 0, -1.5)
    assert decide(near, cfg, null_threshold=0.3) is None  # a collection's stricter threshold
    assert decide([(float("-inf"), "")], cfg, null_threshold=-1e9) is None
    assert decide([], cfg) is None


def test_long_passages_are_read_in_windows(reader):
    filler = " ".join(f"Sentence {i} is about nothing in particular." for i in range(120))
    passage = f"{filler} The Denver Broncos defeated the Carolina Panthers to earn their third Super Bowl title."
    enc_windows = reader.tokenizer(
        "Who won?",
        passage,
        truncation="only_second",
        max_length=reader.cfg.max_length,
        stride=reader.cfg.stride,
        return_overflowing_tokens=True,
    )["input_ids"]
    assert len(enc_windows) > 2
    margin, text = reader.scores("Who won the third Super Bowl title?", [passage])[0]
    assert text in collapse(passage) and text
    assert "Broncos" in text  # the answer lies in the last window only


def test_save_load_round_trip(reader, tmp_path):
    reader.save(tmp_path)
    again = Reader.load(tmp_path)
    assert again.cfg == reader.cfg
    a = reader.scores("Where was the game played?", PASSAGES)
    b = again.scores("Where was the game played?", PASSAGES)
    assert [t for _, t in a] == [t for _, t in b]
    assert [m for m, _ in a[:2]] == pytest.approx([m for m, _ in b[:2]], abs=1e-3)  # float16 storage


def test_load_rejects_weights_of_another_config(reader, tmp_path):
    reader.save(tmp_path)
    cfg = ReaderConfig.load(tmp_path)
    cfg.trained_layers = 1
    cfg.save(tmp_path)
    with pytest.raises(ValueError, match="do not match"):
        Reader.load(tmp_path)


def test_rank_penalty_weighs_the_margin_against_retrieval_order(reader):
    question = "Where was the game played?"
    scored = reader.scores(question, PASSAGES)
    best = max(range(len(scored)), key=lambda i: scored[i][0])

    def with_penalty(p):
        cfg = ReaderConfig(**{**reader.cfg.__dict__, "rank_penalty": p, "null_threshold": -1e9})
        return Reader(cfg, reader.model, reader.tokenizer).answer(question, PASSAGES)

    assert with_penalty(0.0).passage == best  # the best margin alone
    assert with_penalty(1e6).passage == 0  # retrieval's first passage whatever the margins
    reordered = [PASSAGES[1], PASSAGES[0]]  # the answering passage second: a small penalty keeps it
    cfg = ReaderConfig(**{**reader.cfg.__dict__, "null_threshold": -1e9})
    assert Reader(cfg, reader.model, reader.tokenizer).answer(question, reordered).passage == 1
