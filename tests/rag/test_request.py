"""AnswerRequest: the defaults, and every check of an Ask/Chat question, made once on construction."""

from __future__ import annotations

import pytest

from common.errors import InvalidArgumentError
from rag.request import DEFAULT_NUM_PASSAGES, MAX_NUM_PASSAGES, AnswerRequest


def test_defaults_retrieve_five_passages_and_answer_greedily_in_256_tokens():
    r = AnswerRequest.ask("kb", "  What is lava?\n")
    assert r.messages == [{"role": "user", "content": "What is lava?"}]  # stripped, once, here
    assert (r.num_passages, r.filter) == (DEFAULT_NUM_PASSAGES, None) == (5, None)
    assert r.params.max_tokens == 256 and r.params.greedy and r.params.top_k == 0


def test_caller_fields_override_the_defaults():
    r = AnswerRequest.ask("kb", "q", num_passages=MAX_NUM_PASSAGES, sampling={"temperature": 0.7, "top_k": 3})
    assert r.num_passages == 50 and r.params.temperature == 0.7 and r.params.top_k == 3
    assert r.params.max_tokens == 256  # the default still applies to what was not set


def test_retrieval_mode_and_fusion():
    r = AnswerRequest.ask("kb", "q")
    assert r.mode is None and r.fusion == {}  # the collection's default mode, the default fusion
    r = AnswerRequest.ask("kb", "q", mode="hybrid", fusion={"rrf_k": 10, "candidates": 20})
    assert r.mode == "hybrid" and r.fusion == {"rrf_k": 10, "candidates": 20}
    for kwargs, message in [
        ({"mode": "bm25"}, "search mode must be one of"),
        ({"fusion": {"alpha": 3}}, "alpha"),
        ({"fusion": {"k": 3}}, "unknown fields"),
    ]:
        with pytest.raises(InvalidArgumentError, match=message):
            AnswerRequest.ask("kb", "q", **kwargs)


@pytest.mark.parametrize("n", [0, 51, True, 2.5])
def test_num_passages_out_of_range_is_refused(n):
    with pytest.raises(InvalidArgumentError, match=r"num_passages must be in 1\.\.50"):
        AnswerRequest.ask("kb", "q", num_passages=n)


@pytest.mark.parametrize(
    "sampling, message",
    [({"temperature": -1.0}, "temperature"), ({"max_tokens": 0}, "max_tokens"), ({"beams": 2}, "beams")],
)
def test_bad_sampling_fields_are_the_callers_mistake(sampling, message):
    with pytest.raises(InvalidArgumentError, match=message):
        AnswerRequest.ask("kb", "q", sampling=sampling)


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "messages is empty"),
        ([{"role": "robot", "content": "hi"}], "role must be one of"),
        ([{"role": "user", "content": 3}], "content must be text"),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
            "last message must be the user's",
        ),
        ([{"role": "assistant", "content": "hi"}], "last message must be the user's"),
        ([{"role": "user", "content": "  \n"}], "question is empty"),
    ],
)
def test_a_conversation_must_end_with_the_users_question(messages, message):
    with pytest.raises(InvalidArgumentError, match=message):
        AnswerRequest("kb", messages)


def test_a_conversation_keeps_its_turns_in_order():
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about chess."},
        {"role": "assistant", "content": "A board game. "},
        {"role": "user", "content": "Who plays it?"},
    ]
    r = AnswerRequest("kb", msgs, filter={"lang": "en"})
    assert [m["role"] for m in r.messages] == ["system", "user", "assistant", "user"]
    assert r.messages[2]["content"] == "A board game." and r.filter == {"lang": "en"}


def test_grounding_is_free_quote_or_unset():
    assert AnswerRequest.ask("kb", "q").grounding is None  # the collection's, server's or model's default
    assert AnswerRequest.ask("kb", "q", grounding="quote").grounding == "quote"
    with pytest.raises(InvalidArgumentError, match="grounding must be one of free, quote"):
        AnswerRequest.ask("kb", "q", grounding="strict")
