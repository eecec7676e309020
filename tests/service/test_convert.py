"""proto <-> domain: unset fields take the domain's defaults, set ones arrive under the domain's names, and the
answer events become the Ask stream's messages."""

from __future__ import annotations

import pytest

from common.errors import InvalidArgumentError
from pqrag.v1 import rag_pb2, search_pb2
from rag.passages import Passage
from rag.pipeline import AnswerEnd, Context, TextDelta
from rag.request import DEFAULT_NUM_PASSAGES
from service import convert


def test_search_leaves_unset_fields_to_the_domain():
    name, query = convert.search_query_from_proto(search_pb2.SearchRequest(collection="kb", text="lava"))
    assert name == "kb" and "k" not in query  # Collection.search's default k
    assert query == {"query": "lava", "vector": None, "filter": None, "nprobe": None, "rerank": None, "mode": None}
    _, query = convert.search_query_from_proto(search_pb2.SearchRequest(collection="kb", text="lava", top_k=0))
    assert query["k"] == 0  # set, even to 0: the domain refuses it (INVALID_ARGUMENT), it is not the default
    with pytest.raises(InvalidArgumentError, match="set the query"):
        convert.search_query_from_proto(search_pb2.SearchRequest(collection="kb"))


def test_search_modes_and_fusion_arrive_under_the_domain_names():
    req = search_pb2.SearchRequest(
        collection="kb", text="lava", mode=search_pb2.SEARCH_MODE_LEXICAL, fusion=search_pb2.FusionParams(alpha=0.25)
    )
    _, query = convert.search_query_from_proto(req)
    assert query["mode"] == "lexical" and query["alpha"] == 0.25 and "rrf_k" not in query and "candidates" not in query
    req = search_pb2.SearchRequest(collection="kb", text="x", fusion=search_pb2.FusionParams(rrf_k=0, candidates=5))
    _, query = convert.search_query_from_proto(req)
    assert query["rrf_k"] == 0 and query["candidates"] == 5 and query["mode"] is None  # set, even to 0
    with pytest.raises(InvalidArgumentError, match="unknown SearchMode 9"):
        convert.search_query_from_proto(search_pb2.SearchRequest(collection="kb", text="x", mode=9))
    r = convert.ask_request_from_proto(
        rag_pb2.AskRequest(
            collection="kb", question="q", mode=search_pb2.SEARCH_MODE_DENSE, fusion=search_pb2.FusionParams(rrf_k=7)
        )
    )
    assert r.mode == "dense" and r.fusion == {"rrf_k": 7}
    r = convert.chat_request_from_proto(
        rag_pb2.ChatRequest(collection="kb", messages=[rag_pb2.ChatMessage(role="user", content="hi")])
    )
    assert r.mode is None and r.fusion == {}


def test_a_tuning_report_becomes_index_tuning():
    assert convert.tuning_to_proto(None) is None
    params = {"kind": "ivfpq", "m": 24, "nbits": 4, "nlist": 64, "nprobe": 8, "rerank_factor": 4}
    report = {
        "vectors": 9000,
        "queries": 256,
        "recall_target": 0.95,
        "met": True,
        "recall": 0.97,
        "recall_stderr": 0.005,
        "bytes_per_vector": 21.5,
        "settings_trained": 3,
        "seconds": 4.5,
        "params": params,
    }
    t = convert.tuning_to_proto(report)
    assert (t.params.kind, t.params.nlist, t.params.rerank_factor, t.trained_vectors) == ("ivfpq", 64, 4, 9000)
    assert t.met_target and t.recall == pytest.approx(0.97) and t.bytes_per_vector == pytest.approx(21.5)
    failed = convert.tuning_to_proto(
        {
            "vectors": 600,
            "queries": 120,
            "recall_target": 0.99,
            "met": False,
            "recall": 0.9,
            "reason": "no setting met recall@10 0.99",
        }
    )
    assert not failed.HasField("params") and not failed.met_target and "no setting" in failed.reason


def test_ask_unset_fields_are_the_domain_defaults():
    r = convert.ask_request_from_proto(rag_pb2.AskRequest(collection="kb", question=" What is lava? "))
    assert r.messages == [{"role": "user", "content": "What is lava?"}] and r.filter is None
    assert r.num_passages == DEFAULT_NUM_PASSAGES and r.params.max_tokens == 256 and r.params.greedy


def test_ask_fields_arrive_under_the_domain_names():
    req = rag_pb2.AskRequest(
        collection="kb",
        question="q",
        num_passages=7,
        params=rag_pb2.GenerationParams(top_k=3, temperature=0.5, max_tokens=9, stop=["\n\n"], ignore_eos=True),
    )
    req.filter.update({"lang": "en"})
    r = convert.ask_request_from_proto(req)
    assert r.num_passages == 7 and r.filter == {"lang": "en"}
    p = r.params
    assert (p.top_k, p.temperature, p.max_tokens, p.stop_list, p.ignore_eos) == (3, 0.5, 9, ["\n\n"], True)
    assert convert.sampling_from_proto(rag_pb2.GenerationParams()) == {}  # nothing set: nothing overridden


def test_chat_messages_and_their_checks():
    req = rag_pb2.ChatRequest(
        collection="kb",
        messages=[rag_pb2.ChatMessage(role="user", content="hi"), rag_pb2.ChatMessage(role="assistant", content="yo")],
    )
    with pytest.raises(InvalidArgumentError, match="last message must be the user's"):
        convert.chat_request_from_proto(req)
    req.messages.append(rag_pb2.ChatMessage(role="user", content="and?"))
    assert [m["role"] for m in convert.chat_request_from_proto(req).messages] == ["user", "assistant", "user"]
    with pytest.raises(InvalidArgumentError, match="collection name is required"):
        convert.chat_request_from_proto(rag_pb2.ChatRequest(messages=req.messages))


def test_answer_events_become_the_stream_messages():
    p = Passage("doc", 4, 0.5, "text", "", 3, 7, number=1)
    ctx = convert.answer_event_to_proto(Context([p]))
    (c,) = ctx.context.citations
    assert (c.number, c.document_id, c.chunk_id, c.source, c.start, c.end, c.snippet) == (1, "doc", 4, "", 3, 7, "text")
    assert convert.answer_event_to_proto(TextDelta("Hi")).delta.text == "Hi"
    end = convert.answer_event_to_proto(AnswerEnd("length", 10, 3, 1.0, 2.0, 3.0)).final
    assert (end.finish_reason, end.prompt_tokens, end.completion_tokens, end.total_ms) == ("length", 10, 3, 3.0)


def test_grounding_of_a_request_and_of_a_collection():
    from pqrag.v1 import collections_pb2

    assert convert.ask_request_from_proto(rag_pb2.AskRequest(collection="kb", question="q")).grounding is None
    quote = rag_pb2.AskRequest(collection="kb", question="q", grounding=collections_pb2.GROUNDING_QUOTE)
    assert convert.ask_request_from_proto(quote).grounding == "quote"
    chat = rag_pb2.ChatRequest(collection="kb", grounding=collections_pb2.GROUNDING_FREE)
    chat.messages.add(role="user", content="q")
    assert convert.chat_request_from_proto(chat).grounding == "free"
    with pytest.raises(InvalidArgumentError, match="unknown Grounding 7"):
        convert.ask_request_from_proto(rag_pb2.AskRequest(collection="kb", question="q", grounding=7))
    _, config = convert.collection_config_from_proto(
        collections_pb2.Collection(name="kb", default_grounding=collections_pb2.GROUNDING_QUOTE)
    )
    assert config.grounding == "quote"
    assert convert.collection_config_from_proto(collections_pb2.Collection(name="kb"))[1].grounding is None
    assert [convert.grounding_to_proto(g) for g in (None, "free", "quote")] == [0, 1, 2]


def test_extract_grounding_round_trips_and_unknown_values_are_refused():
    from pqrag.v1 import collections_pb2
    from rag.request import GROUNDINGS

    assert collections_pb2.GROUNDING_EXTRACT == 3
    assert convert.grounding_from_proto(collections_pb2.GROUNDING_EXTRACT) == "extract"
    for g in (None, *GROUNDINGS):  # every domain grounding has its enum value, and back
        assert convert.grounding_from_proto(convert.grounding_to_proto(g)) == g
    ask = rag_pb2.AskRequest(collection="kb", question="q", grounding=collections_pb2.GROUNDING_EXTRACT)
    assert convert.ask_request_from_proto(ask).grounding == "extract"
    chat = rag_pb2.ChatRequest(collection="kb", grounding=collections_pb2.GROUNDING_EXTRACT)
    chat.messages.add(role="user", content="q")
    assert convert.chat_request_from_proto(chat).grounding == "extract"
    coll = collections_pb2.Collection(name="kb", default_grounding=collections_pb2.GROUNDING_EXTRACT)
    _, config = convert.collection_config_from_proto(coll)
    assert config.grounding == "extract"
    for bad in (4, -1):
        with pytest.raises(InvalidArgumentError, match=f"unknown Grounding {bad}; use FREE, QUOTE, EXTRACT or leave"):
            convert.ask_request_from_proto(rag_pb2.AskRequest(collection="kb", question="q", grounding=bad))


def test_a_collections_reader_threshold_is_set_only_when_the_field_is():
    import math

    from pqrag.v1 import collections_pb2

    _, unset = convert.collection_config_from_proto(collections_pb2.Collection(name="kb"))
    assert unset.reader_threshold is None  # the reader's own threshold, not 0.0
    for value in (0.0, -2.5, 1.25):  # 0.0 included: set, not the proto3 default
        _, config = convert.collection_config_from_proto(collections_pb2.Collection(name="kb", reader_threshold=value))
        assert config.reader_threshold == value
    # The value itself is the catalog's to check (retrieval.validation.check_reader_threshold): it passes through.
    _, nan = convert.collection_config_from_proto(collections_pb2.Collection(name="kb", reader_threshold=math.nan))
    assert math.isnan(nan.reader_threshold)


def test_a_collections_min_similarity_is_set_only_when_the_field_is():
    import math

    from pqrag.v1 import collections_pb2

    _, unset = convert.collection_config_from_proto(collections_pb2.Collection(name="kb"))
    assert unset.min_similarity is None  # no cut, not a cut at 0.0
    for value in (0.0, -3.5, 0.42):  # 0.0 included: set, not the proto3 default
        _, config = convert.collection_config_from_proto(collections_pb2.Collection(name="kb", min_similarity=value))
        assert config.min_similarity == value and config.reader_threshold is None  # each field on its own
    # The value itself is the catalog's to check (retrieval.validation.check_min_similarity): it passes through.
    _, inf = convert.collection_config_from_proto(collections_pb2.Collection(name="kb", min_similarity=-math.inf))
    assert inf.min_similarity == -math.inf


def test_an_update_takes_the_masks_paths_or_the_populated_fields():
    from pqrag.v1 import collections_pb2

    def settings(collection, *paths):
        request = collections_pb2.UpdateCollectionRequest(collection=collection)
        request.update_mask.paths.extend(paths)
        return convert.collection_update_from_proto(request)

    full = collections_pb2.Collection(
        name="kb",
        embedder="other",
        default_search_mode=search_pb2.SEARCH_MODE_DENSE,
        default_grounding=collections_pb2.GROUNDING_EXTRACT,
        reader_threshold=0.0,
        min_similarity=0.0,
    )
    assert settings(full) == (
        "kb",
        {"search_mode": "dense", "grounding": "extract", "reader_threshold": 0.0, "min_similarity": 0.0},
    )
    assert settings(full, "reader_threshold") == ("kb", {"reader_threshold": 0.0})  # only the mask's
    assert settings(full, "min_similarity") == ("kb", {"min_similarity": 0.0})
    empty = collections_pb2.Collection(name="kb")
    assert settings(empty) == ("kb", {})  # nothing populated, no mask: nothing changes
    cleared = {"search_mode": None, "grounding": None, "reader_threshold": None, "min_similarity": None}  # defaults
    all_paths = ("default_search_mode", "default_grounding", "reader_threshold", "min_similarity")
    assert settings(empty, *all_paths) == ("kb", cleared)  # unset + named: back to the defaults
    assert settings(empty, "min_similarity") == ("kb", {"min_similarity": None})
    assert settings(empty, "reader_threshold", "reader_threshold") == ("kb", {"reader_threshold": None})
    odd = collections_pb2.Collection(name="kb", default_search_mode=9)  # outside the mask: never read
    assert settings(odd, "reader_threshold") == ("kb", {"reader_threshold": None})
    with pytest.raises(InvalidArgumentError, match="unknown SearchMode 9"):
        settings(odd)
    with pytest.raises(InvalidArgumentError, match="update_mask path 'index.kind' cannot be updated; the updatable"):
        settings(full, "reader_threshold", "index.kind")
    with pytest.raises(InvalidArgumentError, match="name is required"):
        settings(collections_pb2.Collection(reader_threshold=1.0))


def test_an_update_without_a_mask_may_repeat_the_fixed_fields_not_change_them():
    from pqrag.v1 import collections_pb2

    current = collections_pb2.Collection(
        name="kb", index=collections_pb2.IndexSpec(metric="ip"), chunking=collections_pb2.ChunkingSpec(chunk_tokens=200)
    )
    sent = collections_pb2.Collection()
    sent.CopyFrom(current)
    assert (
        convert.fixed_fields_set(sent) == ["index", "chunking"]
        and convert.fixed_fields_set(collections_pb2.Collection(name="kb")) == []
    )
    convert.check_fixed_fields(sent, current)  # the same: fine
    sent.chunking.chunk_tokens = 100
    sent.embedder = "other"
    with pytest.raises(InvalidArgumentError, match="embedder, chunking cannot be updated"):
        convert.check_fixed_fields(sent, current)
