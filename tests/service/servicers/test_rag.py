"""Rag over a real gRPC channel with a real (tiny, random-weight) generator: stream order and citations,
cancellation freeing KV blocks, concurrency with ingestion, bad input, a retrieval-only server."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from tests.service.conftest import RAG_DOCS, ServerThread


def engine_stats(srv):
    return srv.server.generator.engine.stats()


def wait_for(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_ask_streams_citations_then_deltas_then_final(rag_server):
    with rag_server.client(timeout=120) as c:
        events = list(
            c.ask_stream("kb", "What makes sourdough bread rise?", num_passages=2, max_tokens=12, ignore_eos=True)
        )
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "context" and kinds[-1] == "final" and set(kinds[1:-1]) == {"delta"}
    cites = events[0].context.citations
    assert cites[0].document_id == "bread" and cites[0].number == 1 and [x.number for x in cites] == [1, 2]
    assert cites[0].source == "bread.md" and "wild yeast" in cites[0].snippet
    assert (cites[0].start, cites[0].end) == (0, len(RAG_DOCS[1]["text"]))
    final = events[-1].final
    assert final.finish_reason == "length" and final.completion_tokens == 12
    assert final.prompt_tokens > 0 and 0 < final.retrieval_ms <= final.time_to_first_token_ms <= final.total_ms
    assert "".join(e.delta.text for e in events[1:-1])  # some text came through


def test_ask_is_deterministic_for_greedy_and_chat_uses_the_conversation(rag_server):
    with rag_server.client(timeout=120) as c:
        a = c.ask("kb", "How many moons does Saturn have?", max_tokens=10, ignore_eos=True)
        b = c.ask("kb", "How many moons does Saturn have?", max_tokens=10, ignore_eos=True)
        assert a["answer"] == b["answer"] and a["citations"][0]["doc_id"] == "saturn"
        chat = c.chat(
            "kb",
            [
                {"role": "user", "content": "Tell me about the Sicilian Defence."},
                {"role": "assistant", "content": "It is a chess opening."},
                {"role": "user", "content": "What does it answer 1.e4 with?"},
            ],
            num_passages=1,
            max_tokens=5,
        )
    assert [x["doc_id"] for x in chat["citations"]] == ["chess"]
    assert chat["final"]["completion_tokens"] <= 5


def test_cancelling_mid_answer_aborts_the_request_and_frees_its_blocks(rag_server):
    stats = engine_stats(rag_server)
    aborted, total = stats["num_aborted_requests"], stats["num_blocks"]
    with rag_server.client(timeout=120) as c:
        call = c.ask_stream("kb", "Why do volcanoes erupt?", max_tokens=300, ignore_eos=True)
        it = iter(call)
        assert next(it).WhichOneof("event") == "context"
        assert next(it).WhichOneof("event") == "delta"
        assert engine_stats(rag_server)["num_free_blocks"] < total  # the answer holds KV blocks now
        call.cancel()
        with pytest.raises(grpc.RpcError) as e:
            list(it)
        assert e.value.code() == grpc.StatusCode.CANCELLED
    assert wait_for(lambda: engine_stats(rag_server)["num_aborted_requests"] == aborted + 1)
    assert wait_for(lambda: engine_stats(rag_server)["num_free_blocks"] == total)
    assert engine_stats(rag_server)["num_running"] == 0


def test_concurrent_asks_and_an_ingest_all_complete(rag_server):
    results, errors = {}, []

    def ask(i):
        try:
            with rag_server.client(timeout=120) as c:
                results[i] = c.ask(
                    "kb",
                    ["volcano lava", "chess opening", "saturn rings", "bread yeast"][i % 4],
                    max_tokens=16,
                    ignore_eos=True,
                )
        except Exception as exc:  # reported below
            errors.append(exc)

    def ingest():
        try:
            with rag_server.client(timeout=120) as c:
                docs = [{"id": f"extra{i}", "text": f"Extra note {i} about tides and the moon."} for i in range(40)]
                results["ingest"] = len(list(c.ingest("kb", docs)))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)] + [threading.Thread(target=ingest)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert results["ingest"] == 40
    for i in range(6):
        assert results[i]["final"]["completion_tokens"] == 16 and results[i]["citations"]


@pytest.mark.parametrize(
    "kwargs, code, message",
    [
        ({"question": "   "}, grpc.StatusCode.INVALID_ARGUMENT, "question is empty"),
        ({"collection": "nope"}, grpc.StatusCode.NOT_FOUND, "nope"),
        ({"num_passages": 0}, grpc.StatusCode.INVALID_ARGUMENT, "num_passages must be in 1..50"),
        ({"num_passages": 51}, grpc.StatusCode.INVALID_ARGUMENT, "num_passages must be in 1..50"),
        ({"max_tokens": 600}, grpc.StatusCode.INVALID_ARGUMENT, "window of 512"),
        ({"temperature": -1.0}, grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
    ],
)
def test_bad_ask_input_gets_a_clear_status_and_the_server_keeps_serving(rag_server, kwargs, code, message):
    args = {"collection": "kb", "question": "What is lava?", **kwargs}
    with rag_server.client(timeout=60) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.ask(args.pop("collection"), args.pop("question"), **args)
        assert e.value.code() == code and message in e.value.details()
        assert c.ask("kb", "What is lava?", max_tokens=2)["final"] is not None


def test_bad_chat_input(rag_server):
    with rag_server.client(timeout=60) as c:
        for messages, msg in (
            ([], "messages is empty"),
            ([{"role": "robot", "content": "hi"}], "role must be one of"),
            (
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                "last message must be the user's",
            ),
        ):
            with pytest.raises(grpc.RpcError) as e:
                c.chat("kb", messages)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and msg in e.value.details()


def test_retrieval_only_server_refuses_ask_but_searches(tmp_path):
    srv = ServerThread(tmp_path / "data").start()  # no model: --no-generator
    try:
        with srv.client(timeout=60) as c:
            c.create_collection("kb")
            list(c.ingest("kb", RAG_DOCS[:2]))
            with pytest.raises(grpc.RpcError) as e:
                c.ask("kb", "What is lava?")
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "--no-generator" in e.value.details()
            assert c.search("kb", "lava", k=1)[0]["doc_id"] == "volcano"
    finally:
        srv.stop()


def test_a_model_whose_tokenizer_has_no_chat_template_is_refused_at_startup(tmp_path, tiny_model_dir):
    import json
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    del cfg["chat_template"]  # any tokenizer serves (its own chat tokens or not), but the prompt needs a template
    (model_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no chat template"):
        ServerThread(tmp_path / "data", model=str(model_dir)).start()
