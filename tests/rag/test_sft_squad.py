"""SQuAD-derived fine-tuning data: the answering quote holds the annotated answer and ends a sentence, the split
by article keeps evaluated articles out, distractors never hold an answer, and the records are deterministic."""

from __future__ import annotations

import json
import re

from rag.prompt import NO_ANSWER, SYSTEM_PROMPT
from rag.sft_squad import SquadSftConfig, answer_quote, generate, main, training_article
from tests.rag.conftest import squad_fixture

PARAGRAPH = (
    "Super Bowl 50 was an American football game. The American Football Conference champion, the Denver Broncos,"
    " defeated the Carolina Panthers 24–10 to earn their third Super Bowl title. The game was played on February 7,"
    " 2016, at Levi's Stadium in Santa Clara, California."
)


def test_answer_quote_is_the_clause_to_the_sentence_end_holding_the_answer():
    start = PARAGRAPH.index("Denver Broncos")
    quote = answer_quote(PARAGRAPH, start, "Denver Broncos")
    assert quote == "the Denver Broncos, defeated the Carolina Panthers 24–10 to earn their third Super Bowl title."
    assert quote in PARAGRAPH
    start = PARAGRAPH.index("Santa Clara")  # the clause after "Stadium in" is too short: back to a longer one
    assert answer_quote(PARAGRAPH, start, "Santa Clara") == "at Levi's Stadium in Santa Clara, California."
    assert answer_quote("No sentence end here, Denver", 22, "Denver") is None


def test_records_use_training_articles_only_and_quote_the_gold_answer(tmp_path):
    titles = [f"Article{i}" for i in range(12)]
    train = [t for t in titles if training_article(t)]
    assert 0 < len(train) < len(titles)  # both halves are non-empty
    squad = squad_fixture(tmp_path, titles)
    records = list(generate(SquadSftConfig(n=50, seed=1, none_fraction=0.3), squad))
    assert len(records) == 3 * len(train)  # every question of a training article once, no other
    refused = 0
    for r in records:
        system, user, assistant = (m["content"] for m in r["messages"])
        assert system == SYSTEM_PROMPT
        shown = re.findall(r"^\[\d+\] \((Article\d+)\) ", user, re.MULTILINE)
        assert shown and all(training_article(t) for t in shown)
        question = user.split("\n\nQuestion: ")[1]
        title, j = re.search(r"of (Article\d+)\?", question)[1], re.search(r"number (\d)", question)[1]
        gold = f"{title} city {j}"
        if assistant == NO_ANSWER:
            refused += 1
            assert gold not in user.split("\n\nQuestion: ")[0]  # the answering paragraph was dropped
            continue
        m = re.fullmatch(r"(.+) \[(\d+)\]", assistant)
        assert m and gold in m[1]
        passage = re.search(rf"^\[{m[2]}\] \(\w+\) (.*)$", user, re.MULTILINE)[1]
        assert m[1] in passage and m[1].endswith(".")
        assert user.count(gold) == 1 + (gold in question)  # no distractor holds the answer
    assert 0 < refused < len(records)
    assert records == list(generate(SquadSftConfig(n=50, seed=1, none_fraction=0.3), squad))


def test_cli_writes_jsonl_and_reports_a_missing_folder(tmp_path, capsys):
    squad = squad_fixture(tmp_path, [f"Article{i}" for i in range(6)])
    out = tmp_path / "out.jsonl"
    assert main(["--squad", str(squad), "--out", str(out), "--n", "3"]) == 0
    assert len(out.read_text().splitlines()) == 3
    assert json.loads(capsys.readouterr().out)["examples"] == 3
    assert main(["--squad", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "error" in capsys.readouterr().err
