"""User text -> FTS5 query: words only, never syntax. Checked on hand-picked FTS5 operators and fuzzed (hypothesis)
against a real FTS5 table: a query never raises, and it matches exactly the rows that one of its words matches on
its own (a disjunction of plain words: no phrase, NEAR, column filter, prefix, ^ or boolean operator)."""

import re
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval.lexical import MAX_TERMS, STOP_WORDS, match_query, words
from retrieval.schema import FTS_DDL

ROWS = [
    "near the river",
    "text: a column filter",
    "prefix starts here",
    "NOT and OR are words",
    "running dogs and cats",
    'quoted "strings" (parentheses)',
    "café au lait",
    "1.e4 c5 sicilian",
    "under_score stays apart",
    "日本語のテキスト",
]


@pytest.fixture(scope="module")
def fts():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE chunks (id INTEGER PRIMARY KEY, text TEXT)")
    conn.execute(FTS_DDL.format(table="t"))
    for i, text in enumerate(ROWS, start=1):
        conn.execute("INSERT INTO chunks VALUES (?, ?)", (i, text))
        conn.execute("INSERT INTO t (rowid, text) VALUES (?, ?)", (i, text))
    yield conn
    conn.close()


def matches(conn, query) -> set[int]:
    return {r[0] for r in conn.execute("SELECT rowid FROM t WHERE t MATCH ?", (query,))}


QUERY = re.compile(r'^"[^"]+"( OR "[^"]+")*$')


def check(conn, text):
    q = match_query(text)
    terms = words(text)
    if q is None:
        assert not terms
        return
    assert QUERY.match(q), q  # a disjunction of FTS5 strings, nothing else
    union = set().union(*(matches(conn, f'"{w}"') for w in q[1:-1].split('" OR "')))
    assert matches(conn, q) == union


@pytest.mark.parametrize(
    "text",
    [
        "NEAR(river near, 2)",
        "text:column",
        "prefix*",
        "^prefix",
        "(parentheses OR strings) AND NOT cats",
        'unbalanced "quote',
        '"quoted" ""strings""',
        "- + : * ^ ( ) \" '",
        "café",
        "1.e4",
        "under_score",
        "日本語",
        "",
        "   ",
        "?!",
    ],
)
def test_fts5_syntax_in_user_text_is_plain_words(fts, text):
    check(fts, text)


def test_operators_and_filters_are_searched_as_words(fts):
    assert matches(fts, match_query("NEAR(river)")) == {1}  # the words near and river, not the NEAR operator
    assert matches(fts, match_query("text:")) == {2}  # the word text, not a column filter
    assert matches(fts, match_query("prefix*")) == {3}  # no prefix query: "pre*" would match too
    assert match_query("pre*") is not None and matches(fts, match_query("pre*")) == set()
    assert matches(fts, match_query("NOT")) == {4}  # a word here, an operator in FTS5 syntax
    assert matches(fts, match_query("runs")) == {5}  # porter stemming on both sides
    assert matches(fts, match_query("cafe")) == {7}  # diacritics removed
    assert matches(fts, match_query("under")) == {9}  # unicode61 splits on "_" as words() does


def test_words_and_stop_words():
    assert words("What is the Moon? the moon!") == ["what", "is", "the", "moon"]
    assert match_query("What is the Moon?") == '"moon"'
    assert match_query("what is the") == '"what" OR "is" OR "the"'  # only stop words: keep them
    assert match_query("What is the Moon?", stop_words=False) == '"what" OR "is" OR "the" OR "moon"'
    assert {"the", "of", "what"} <= STOP_WORDS
    assert len(words(" ".join(f"w{i}" for i in range(500)))) == MAX_TERMS


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.text(max_size=12),
            st.sampled_from(['"', "*", "^", "(", ")", ":", "-", "+", "NEAR", "AND", "OR", "NOT", "text:", "{", "}"]),
            st.sampled_from(["river", "running", "café", "c5", "under_score", "日本語", "the", "words"]),
        ),
        max_size=12,
    ).map(" ".join)
)
def test_random_text_never_raises_and_never_becomes_syntax(fts, text):
    check(fts, text)
