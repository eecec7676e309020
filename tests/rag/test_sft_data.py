"""Synthetic RAG fine-tuning data: the server's exact prompt format, answers copied from the cited passage,
unanswerable examples, determinism, and records the trainer reads as chat records."""

from __future__ import annotations

import re

import pytest

from llm.train.corpus import ChatRecord, file_texts
from rag.prompt import SYSTEM_PROMPT
from rag.sft_data import NO_ANSWER, RagSftConfig, first_sentences, generate, topic_chunks, write_jsonl

_PASSAGE = re.compile(r"^\[(\d+)\] \(pydoc_data/topics\.py#([\w-]+)\) ", re.MULTILINE)


@pytest.fixture(scope="module")
def chunks():
    from pydoc_data.topics import topics

    return topic_chunks(RagSftConfig(), {k: topics[k] for k in sorted(topics)[:12]})  # a few topics: fast


def _passages(user: str) -> dict[int, tuple[str, str]]:
    """{number: (topic, text)} of a rendered user turn."""
    context = user.split("\n\nQuestion: ")[0].removeprefix("Context:\n")
    marks = list(_PASSAGE.finditer(context))
    return {
        int(m[1]): (m[2], context[m.end() : marks[i + 1].start() if i + 1 < len(marks) else len(context)])
        for i, m in enumerate(marks)
    }


def test_examples_have_the_server_format_and_cite_the_passage_they_copy(chunks):
    records = list(generate(RagSftConfig(n=200, seed=3), chunks))
    assert len(records) == 200
    unanswerable = 0
    for r in records:
        system, user, assistant = r["messages"]
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert system["content"] == SYSTEM_PROMPT and user["content"].startswith("Context:\n[1] (pydoc_data/")
        passages = _passages(user["content"])
        assert sorted(passages) == list(range(1, len(passages) + 1)) and 1 <= len(passages) <= 4
        if assistant["content"] == NO_ANSWER:
            unanswerable += 1
            continue
        m = re.fullmatch(r"(.+) \[(\d+)\]", assistant["content"], re.DOTALL)
        assert m, assistant["content"]
        topic, text = passages[int(m[2])]
        assert m[1] in " ".join(text.split())  # copied verbatim (whitespace collapsed) from the cited passage
        assert [t for t, _ in passages.values()].count(topic) == 1  # distractors come from other topics
    assert 8 <= unanswerable <= 40  # none_fraction 0.1
    assert records == list(generate(RagSftConfig(n=200, seed=3), chunks))  # deterministic by seed
    assert records != list(generate(RagSftConfig(n=200, seed=4), chunks))


def test_records_round_trip_as_chat_records(chunks, tmp_path):
    path = tmp_path / "sft.jsonl"
    assert write_jsonl(str(path), generate(RagSftConfig(n=5), chunks)) == 5
    docs = list(file_texts([path]))
    assert len(docs) == 5 and all(isinstance(d, ChatRecord) and len(d.messages) == 3 for d in docs)


def test_first_sentences_skip_headings_and_grammar():
    text = (
        'The "for" statement\n*******************\n\n   for_stmt ::= "for" target_list "in" suite\n\n'
        "The for statement is used to iterate over the elements of a sequence.\nThe end.  More text here."
    )
    assert first_sentences(text) == ("The for statement is used to iterate over the elements of a sequence. The end.")
    assert first_sentences("   indented code only\n") is None
