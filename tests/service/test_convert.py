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
    assert query == {"query": "lava", "vector": None, "filter": None, "nprobe": None, "rerank": None}
    _, query = convert.search_query_from_proto(search_pb2.SearchRequest(collection="kb", text="lava", top_k=0))
    assert query["k"] == 0  # set, even to 0: the domain refuses it (INVALID_ARGUMENT), it is not the default
    with pytest.raises(InvalidArgumentError, match="set the query"):
        convert.search_query_from_proto(search_pb2.SearchRequest(collection="kb"))


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
