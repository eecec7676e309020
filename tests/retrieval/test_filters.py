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
