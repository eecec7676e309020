import numpy as np
import pytest

from common.errors import InvalidArgumentError, ResourceExhaustedError
from retrieval.types import Document, SearchParams
from retrieval.validation import (
    MAX_QUERY_BYTES,
    MAX_TEXT_BYTES,
    as_document,
    check_document,
    check_document_id,
    check_min_similarity,
    check_query_text,
    check_query_vector,
    check_reader_threshold,
    check_search,
    validate_name,
)

MAX_K = SearchParams.MAX_K


@pytest.mark.parametrize("name", ["a", "notes_2024", "A-b", "x" * 64])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 65, "has space", "dot.ted", "ünï", None, 3])
def test_invalid_names_say_what_is_allowed(name):
    with pytest.raises(InvalidArgumentError, match="letters, digits"):
        validate_name(name)


def test_as_document_from_mapping_and_unknown_fields():
    d = as_document({"id": "a", "text": "t", "metadata": {"k": 1}}, 0)
    assert (d.id, d.text, d.metadata, d.source) == ("a", "t", {"k": 1}, "")
    with pytest.raises(InvalidArgumentError, match=r"unknown fields \['body'\]"):
        as_document({"id": "a", "body": "t"}, 3)
    with pytest.raises(InvalidArgumentError, match="document 1 is a str"):
        as_document("text", 1)


def test_check_document_normalises_and_fills_an_id():
    doc_id, meta, source = check_document(Document(id=None, text="hello", metadata={"é": [1, 2]}), 0)
    assert len(doc_id) == 36 and meta == '{"é": [1, 2]}' and source == ""
    assert check_document(Document(id="x", text="t", metadata={}, source="s.md"), 0) == ("x", "{}", "s.md")


@pytest.mark.parametrize(
    "doc, err, match",
    [
        (Document(id="a", text="  \n"), InvalidArgumentError, "empty text"),
        (Document(id="a", text=None), InvalidArgumentError, "text must be a string"),
        (Document(id=" ", text="t"), InvalidArgumentError, "not only spaces"),
        (Document(id="a", text="a" * (MAX_TEXT_BYTES + 1)), ResourceExhaustedError, "split it"),
        (Document(id="a", text="bad \ud800 surrogate"), InvalidArgumentError, "not valid Unicode"),
        (Document(id="a", text="t", metadata={"x": float("nan")}), InvalidArgumentError, "finite numbers"),
        (Document(id="a", text="t", metadata={1: "x"}), InvalidArgumentError, "keys must be strings"),
        (Document(id="a", text="t", metadata=[1]), InvalidArgumentError, "metadata must be an object"),
        (Document(id="a", text="t", source=5), InvalidArgumentError, "source must be a string"),
    ],
)
def test_check_document_rejects(doc, err, match):
    with pytest.raises(err, match=match):
        check_document(doc, 7)


def test_k_bounds():
    assert check_search(1, None, None).k == 1 and check_search(np.int64(MAX_K), None, None).k == MAX_K
    assert type(check_search(np.int64(3), None, None).k) is int
    for bad in (0, MAX_K + 1, True, 2.0, "3", None):
        with pytest.raises(InvalidArgumentError, match=f"1..{MAX_K}"):
            check_search(bad, None, None)


def test_search_options():
    assert check_search(SearchParams.k, None, None) == SearchParams() == SearchParams(10, None, None)
    assert check_search(5, np.int32(4), False) == SearchParams(5, 4, False)
    with pytest.raises(InvalidArgumentError, match="nprobe"):
        check_search(5, 0, None)
    with pytest.raises(InvalidArgumentError, match="nprobe"):
        check_search(5, True, None)
    with pytest.raises(InvalidArgumentError, match="rerank"):
        check_search(5, None, 1)


def test_document_ids_to_read_or_delete():
    assert check_document_id("a b") == "a b"
    for bad in ("", None, 3):
        with pytest.raises(InvalidArgumentError, match="non-empty string"):
            check_document_id(bad)


def test_query_text():
    assert check_query_text("why?") == "why?"
    for bad in ("", "   ", None, 3):
        with pytest.raises(InvalidArgumentError, match="empty"):
            check_query_text(bad)
    with pytest.raises(InvalidArgumentError, match="longer than"):
        check_query_text("a" * (MAX_QUERY_BYTES + 1))


def test_query_vector_shape_and_values():
    v = check_query_vector([0.5, 1, 2], 3, "c")
    assert v.shape == (1, 3) and v.dtype == np.float32
    assert check_query_vector(np.ones((1, 3)), 3, "c").shape == (1, 3)
    with pytest.raises(InvalidArgumentError, match="collection 'c' needs 3 values"):
        check_query_vector([1.0, 2.0], 3, "c")
    with pytest.raises(InvalidArgumentError, match="NaN"):
        check_query_vector([1.0, float("nan"), 0.0], 3, "c")
    with pytest.raises(InvalidArgumentError, match="list of numbers"):
        check_query_vector(["a", "b", "c"], 3, "c")


def test_every_id_and_name_has_its_length_limit_and_messages_stay_short():
    from retrieval.validation import MAX_DOC_ID_CHARS

    huge = "x" * 100_000
    for call in (
        lambda: validate_name(huge),
        lambda: check_document_id(huge),
        lambda: check_document(Document(id=huge, text="t"), 0),
        lambda: check_document(Document(id="a", text="t", source=huge), 0),
    ):
        with pytest.raises(InvalidArgumentError) as info:
            call()
        assert len(str(info.value)) < 600, str(info.value)[:300]
    assert check_document_id("i" * MAX_DOC_ID_CHARS) == "i" * MAX_DOC_ID_CHARS
    with pytest.raises(InvalidArgumentError, match="1 to 512 characters"):
        check_document_id("i" * (MAX_DOC_ID_CHARS + 1))
    with pytest.raises(InvalidArgumentError, match="not only spaces"):
        check_document_id("   ")


@pytest.mark.parametrize("nprobe", [0, -1, 2**32 - 1, 65537])
def test_nprobe_out_of_range_is_refused(nprobe):
    with pytest.raises(InvalidArgumentError, match="nprobe"):
        check_search(5, nprobe, None)


def test_reader_threshold_is_unset_or_a_finite_number_in_range():
    assert check_reader_threshold(None) is None
    assert check_reader_threshold(-3) == -3.0 and isinstance(check_reader_threshold(-3), float)
    assert check_reader_threshold(np.float32(1.5)) == 1.5 and type(check_reader_threshold(np.float32(1.5))) is float
    assert check_reader_threshold(-100.0) == -100.0
    for bad in (float("nan"), float("inf"), -float("inf"), True, False, "2", [1.0], 100.001, -1e9, 10**400):
        with pytest.raises(InvalidArgumentError, match="reader_threshold must be a finite number") as info:
            check_reader_threshold(bad)
        assert "unset for the reader's own" in str(info.value) and len(str(info.value)) < 600


def test_min_similarity_is_unset_or_a_finite_number_in_range():
    assert check_min_similarity(None) is None
    assert check_min_similarity(0) == 0.0 and isinstance(check_min_similarity(0), float)  # 0 is a cut, not unset
    assert check_min_similarity(np.float32(0.25)) == 0.25 and type(check_min_similarity(np.float32(0.25))) is float
    assert check_min_similarity(-1e6) == -1e6 and check_min_similarity(10**6) == 1e6  # -squared L2 can be large
    for bad in (float("nan"), float("inf"), -float("inf"), True, False, "0.5", [0.5], 1e6 + 1, -1e9, 10**400):
        with pytest.raises(InvalidArgumentError, match="min_similarity must be a finite number") as info:
            check_min_similarity(bad)
        assert "unset for no cut" in str(info.value) and len(str(info.value)) < 600
