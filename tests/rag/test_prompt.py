"""Prompt building: numbering in the prompt, trimming to the window, the conversation query."""

from __future__ import annotations

import pytest

from common.errors import InvalidArgumentError
from rag.prompt import build_prompt, chat_messages, conversation_query
from tests.rag.conftest import H, hit


def test_passages_are_numbered_by_score_and_rendered_in_the_prompt(tok):
    hits = [hit("a", 1, 0.2, 0, 17), hit("b", 2, 0.9, 38, 53)]
    p = build_prompt(tok, [{"role": "user", "content": "What follows eta?"}], hits, 512, 32)
    assert [(x.number, x.doc_id) for x in p.passages] == [(1, "b"), (2, "a")]
    text = tok.decode(p.token_ids, skip_special_tokens=False)
    assert "[1] (b.txt) Eta theta iota." in text and "[2] (a.txt) Alpha beta gamma." in text
    assert text.index("[1]") < text.index("[2]") < text.index("Question: What follows eta?")
    assert text.endswith("<|assistant|>\n")


def test_context_is_trimmed_by_score_to_fit_the_window(tok):
    long_doc = " ".join(f"word{i}" for i in range(400))
    hits = [
        H("big", 1, 0.5, long_doc, "big.txt", 0, len(long_doc)),
        hit("small", 2, 0.9, 0, 17),
        hit("low", 3, 0.1, 18, 36),
    ]
    budget = 256
    p = build_prompt(tok, [{"role": "user", "content": "q?"}], hits, budget + 64, 64)
    assert len(p.token_ids) <= budget
    assert [x.doc_id for x in p.passages] == ["small", "low"] and p.dropped == 1  # the long one does not fit
    assert [x.number for x in p.passages] == [1, 2]  # the citations number what the prompt holds
    roomy = build_prompt(tok, [{"role": "user", "content": "q?"}], hits, 100_000, 64)
    assert [x.doc_id for x in roomy.passages] == ["small", "big", "low"] and roomy.dropped == 0


def test_a_question_that_cannot_fit_is_refused_with_the_numbers(tok):
    with pytest.raises(InvalidArgumentError, match=r"max_tokens=500 .* window of 512"):
        build_prompt(tok, [{"role": "user", "content": "word " * 100}], [], 512, 500)


def test_conversation_query_reads_the_previous_user_turn():
    msgs = [
        {"role": "user", "content": "How do I sort a list?"},
        {"role": "assistant", "content": "Use sorted."},
        {"role": "user", "content": "And in reverse?"},
    ]
    assert conversation_query(msgs) == "How do I sort a list?\nAnd in reverse?"
    assert conversation_query(msgs[:1]) == "How do I sort a list?"
    # A conversation without a user question never gets here: AnswerRequest refuses it (tests/rag/test_request.py).
    with pytest.raises(AssertionError):
        conversation_query([{"role": "assistant", "content": "hi"}])


def test_a_template_without_a_system_role_gets_the_instructions_in_the_first_user_turn(tmp_path):
    """Mixtral-Instruct's template raises on a system message: the instructions (and a system message the client
    sent) go first in the first user turn; the passages stay with the question."""
    from llm.tokenizer import Tokenizer
    from rag.prompt import SYSTEM_PROMPT
    from tests.llm import tiny_tokenizers

    tok = Tokenizer.from_file(tiny_tokenizers.mixtral_instruct(tmp_path / "mixtral"))
    assert not tok.accepts_system_role
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about eta."},
        {"role": "assistant", "content": "A letter."},
        {"role": "user", "content": "What follows it?"},
    ]
    p = build_prompt(tok, chat, [hit("b", 2, 0.9, 38, 53)], 2048, 32)
    text = tok.decode(p.token_ids, skip_special_tokens=False)
    assert text.startswith(f"<s> [INST] {SYSTEM_PROMPT}\n\nBe brief.\n\nTell me about eta. [/INST]")
    assert text.index("A letter.</s>") < text.index("[1] (b.txt) Eta theta iota.") < text.index("What follows it?")
    assert text.endswith("[/INST]")
    assert chat_messages("S", chat[1:], accepts_system_role=True)[0] == {"role": "system", "content": "S"}


def test_the_prompt_is_the_models_own_template(tmp_path):
    from llm.tokenizer import Tokenizer
    from tests.llm import tiny_tokenizers

    tok = Tokenizer.from_file(tiny_tokenizers.chatml(tmp_path / "chatml"))
    p = build_prompt(tok, [{"role": "user", "content": "What follows eta?"}], [hit("b", 2, 0.9, 38, 53)], 512, 32)
    text = tok.decode(p.token_ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\nYou answer questions about the documents below.")
    assert text.endswith("Question: What follows eta?<|im_end|>\n<|im_start|>assistant\n")
