"""Synthetic RAG fine-tuning data: the server's exact prompt format, answers copied from the cited passage,
unanswerable examples, determinism, and records the trainer reads as chat records."""

from __future__ import annotations

import re

import pytest

from llm.train.corpus import ChatRecord, file_texts
from rag.prompt import SYSTEM_PROMPT
from rag.sft_data import (
    NO_ANSWER,
    RagSftConfig,
    first_sentences,
    generate,
    prose_sentences,
    topic_chunks,
    write_jsonl,
)

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


_QUOTE = re.compile(r"(.+?) \[(\d+)\](?: |$)", re.DOTALL)


def test_examples_have_the_server_format_and_cite_the_passage_they_copy(chunks):
    records = list(generate(RagSftConfig(n=300, seed=3), chunks))
    assert len(records) == 300
    unanswerable, two_quotes, near = 0, 0, 0
    for r in records:
        system, user, assistant = r["messages"]
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert system["content"] == SYSTEM_PROMPT and user["content"].startswith("Context:\n[1] (pydoc_data/")
        passages = _passages(user["content"])
        assert sorted(passages) == list(range(1, len(passages) + 1)) and 1 <= len(passages) <= 5
        if assistant["content"] == NO_ANSWER:
            unanswerable += 1
            continue
        quotes = _QUOTE.findall(assistant["content"])
        assert quotes and "".join(f"{q} [{n}] " for q, n in quotes).strip() == assistant["content"]
        two_quotes += len(quotes) == 2
        for quote, n in quotes:
            topic, text = passages[int(n)]
            assert quote in " ".join(text.split())  # copied verbatim (whitespace collapsed) from the cited passage
            others = [t for k, (_, t) in passages.items() if k != int(n)]
            assert not any(quote in " ".join(t.split()) for t in others)  # no distractor holds the answer
            near += [t for t, _ in passages.values()].count(topic) > 1  # a distractor from the same topic
    assert 10 <= unanswerable <= 60  # none_fraction 0.1
    assert two_quotes >= 5 and near >= 20  # comparisons; close distractors
    assert records == list(generate(RagSftConfig(n=300, seed=3), chunks))  # deterministic by seed
    assert records != list(generate(RagSftConfig(n=300, seed=4), chunks))


def test_questions_come_in_the_forms_people_use(chunks):
    questions = [
        r["messages"][1]["content"].split("\n\nQuestion: ")[1] for r in generate(RagSftConfig(n=400, seed=1), chunks)
    ]
    assert len(set(questions)) > 250
    assert any(q.startswith("What is the difference between") for q in questions)
    assert any(not q.endswith((".", "?")) and q[0].islower() for q in questions)  # typed casually
    starts = {q.split()[0].lower() for q in questions}
    assert {"what", "how", "explain", "can"} <= starts


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


def test_prose_sentences_are_every_whole_prose_sentence():
    text = (
        "Intro\n*****\n\nThe first sentence is long enough to count here. A second one also counts as prose.\n\n"
        "   code_line = 1\n\nThe last paragraph has one more whole sentence. Cut-off"
    )
    assert prose_sentences(text) == [
        "The first sentence is long enough to count here.",
        "A second one also counts as prose.",
        "The last paragraph has one more whole sentence.",
    ]
