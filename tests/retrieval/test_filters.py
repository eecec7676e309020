"""Metadata filters compiled to SQL and run by the store: which documents' chunks a filter allows, and the messages
for filters it does not support."""

import pytest

from common.errors import InvalidArgumentError
from retrieval.filters import compile_filter
from tests.retrieval.helpers import new_collection, put


def allowed_docs(store, cid, flt):
    where, params = compile_filter(flt)
    ids = store.allowed_ids(cid, where, params)
    rows = store.chunk_rows(cid, ids.tolist())
    return sorted({r["doc_id"] for r in rows.values()})


def test_filters_select_documents(store):
    cid = new_collection(store)
    metas = {
        "en1": {"lang": "en", "tag": "a", "year": 2020, "draft": False, "my-field.x": "v"},
        "en2": {"lang": "en", "tag": "b", "year": 2021.0, "draft": True},
        "de1": {"lang": "de", "tag": "c", "year": "2020"},
        "none": {},
    }
    for i, (doc, m) in enumerate(metas.items()):
        put(store, cid, doc, 2, metadata=m, seed=i)
    other = new_collection(store, "other")
    put(store, other, "en9", 1, metadata={"lang": "en"})

    assert allowed_docs(store, cid, None) == ["de1", "en1", "en2", "none"]
    assert allowed_docs(store, cid, {}) == ["de1", "en1", "en2", "none"]
    assert allowed_docs(store, cid, {"lang": "en"}) == ["en1", "en2"]
    assert allowed_docs(store, cid, {"lang": {"$eq": "de"}}) == ["de1"]
    assert allowed_docs(store, cid, {"tag": {"$in": ["a", "c", "zzz"]}}) == ["de1", "en1"]
    assert allowed_docs(store, cid, {"lang": "en", "tag": {"$in": ["b", "c"]}}) == ["en2"]
    # JSON types stay apart: 2020 (number) is not "2020" (string); 2021 == 2021.0.
    assert allowed_docs(store, cid, {"year": 2020}) == ["en1"]
    assert allowed_docs(store, cid, {"year": "2020"}) == ["de1"]
    assert allowed_docs(store, cid, {"year": 2021}) == ["en2"]
    assert allowed_docs(store, cid, {"draft": True}) == ["en2"]
    assert allowed_docs(store, cid, {"draft": False}) == ["en1"]
    assert allowed_docs(store, cid, {"year": {"$in": [2020, "2020"]}}) == ["de1", "en1"]
    assert allowed_docs(store, cid, {"my-field.x": "v"}) == ["en1"]
    assert allowed_docs(store, cid, {"missing": "x"}) == []
    assert len(store.allowed_ids(cid, *compile_filter({"lang": "en"}))) == 4  # chunks, not documents


@pytest.mark.parametrize(
    "flt,msg",
    [
        ({"year": {"$gt": 3}}, "unknown filter operator '\\$gt'"),
        ({"tag": ["a", "b"]}, "not supported"),
        ({"tag": {"a": 1}}, "unknown filter operator"),
        ({"tag": {"$in": "a"}}, "non-empty list"),
        ({"tag": {"$in": []}}, "non-empty list"),
        ({"tag": {"$in": [["a"]]}}, "not supported"),
        ({"tag": {"$eq": "a", "$in": ["a"]}}, "exactly one operator"),
        ({"tag": None}, "not supported"),
        ({"x": float("nan")}, "finite"),
        ({"bad field": 1}, "bad filter field name"),
        ({'x"); DROP TABLE chunks; --': 1}, "bad filter field name"),
        ({"": 1}, "bad filter field name"),
        (["lang", "en"], "must be an object"),
    ],
)
def test_bad_filters_say_what_is_supported(flt, msg):
    with pytest.raises(InvalidArgumentError, match=msg) as info:
        compile_filter(flt)
    assert "$in" in str(info.value)  # the message lists the supported syntax


def test_filters_at_the_documented_limits_run_in_sqlite(store):
    """An $in of MAX_IN_VALUES values and MAX_FILTER_FIELDS ANDed fields compile to shallow SQL that SQLite runs
    (a chain of ORs / ANDs used to pass its expression depth limit of 1000 and fail with OperationalError)."""
    from retrieval.filters import MAX_FILTER_FIELDS, MAX_IN_VALUES

    cid = new_collection(store)
    put(store, cid, "hit", 1, metadata={"tag": "t1023", **{f"f{i}": i for i in range(MAX_FILTER_FIELDS)}})
    put(store, cid, "miss", 1, metadata={"tag": "other", "f0": 0}, seed=1)
    values = [f"t{i}" for i in range(MAX_IN_VALUES - 2)] + [True, "t1023"]
    assert allowed_docs(store, cid, {"tag": {"$in": values}}) == ["hit"]
    mixed = [f"t{i}" for i in range(500)] + list(range(500)) + [True, False]
    assert allowed_docs(store, cid, {"f3": {"$in": mixed}}) == ["hit"]  # 3 matches the number, not "3"
    assert allowed_docs(store, cid, {f"f{i}": i for i in range(MAX_FILTER_FIELDS)}) == ["hit"]
    many = {f"f{i}": {"$in": [i, *range(1000, 1000 + 60)]} for i in range(MAX_FILTER_FIELDS)}
    assert allowed_docs(store, cid, many) == ["hit"]


@pytest.mark.parametrize(
    "flt,msg",
    [
        ({f"f{i}": i for i in range(65)}, "more than 64"),
        ({"tag": {"$in": list(range(1025))}}, "at most 1024"),
        ({f"f{i}": {"$in": list(range(1000))} for i in range(5)}, "values in all"),
    ],
)
def test_filters_past_the_limits_are_refused(flt, msg):
    with pytest.raises(InvalidArgumentError, match=msg):
        compile_filter(flt)


def test_filter_messages_quote_at_most_about_200_characters():
    with pytest.raises(InvalidArgumentError) as info:
        compile_filter({"k" * 10_000: 1})
    assert len(str(info.value)) < 1000
    with pytest.raises(InvalidArgumentError) as info:
        compile_filter({"tag": {"$in": [{"deep": "y" * 100_000}]}})
    assert len(str(info.value)) < 1000
