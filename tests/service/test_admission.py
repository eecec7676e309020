"""Backpressure for answers over a real channel with the tiny generator: admission control refuses with
RESOURCE_EXHAUSTED before anything is streamed (no citations first), per-key token limits, and a deadline that
aborts the answer and frees its KV blocks."""

from __future__ import annotations

import time

import grpc
import pytest

from common.errors import TooManyRequestsError
from service.admission import Admission
from service.auth import KeyStore, Role
from tests.service.conftest import RAG_DOCS, ServerThread


@pytest.fixture(scope="module")
def limited(tmp_path_factory, tiny_model_dir):
    data = tmp_path_factory.mktemp("limited") / "data"
    _, key = KeyStore(data).create(Role.ADMIN, name="k")
    srv = ServerThread(
        data, model=str(tiny_model_dir), max_waiting_requests=2, max_waiting_tokens=4000, rate_limit_tps=1e9
    ).start()
    with srv.client(api_key=key, timeout=120) as c:
        c.create_collection("kb")
        list(c.ingest("kb", RAG_DOCS))
    yield srv, key
    srv.stop()


def received_before_error(stream) -> tuple[list, grpc.RpcError]:
    got = []
    with pytest.raises(grpc.RpcError) as e:
        for event in stream:
            got.append(event)
    return got, e.value


def test_admission_counts_waiting_answers_and_their_tokens():
    a = Admission(max_waiting_requests=2, max_waiting_tokens=100)
    t1, t2 = a.ticket(), a.ticket()
    with pytest.raises(TooManyRequestsError, match="--max-waiting-requests"):
        a.ticket()
    t1.reserve(80)
    with pytest.raises(TooManyRequestsError, match="--max-waiting-tokens"):
        t2.reserve(30)
    t1.started()  # its first token: no longer waiting
    t2.reserve(500)  # alone in the line: admitted whatever its size
    assert (a.waiting_requests, a.waiting_tokens) == (1, 500)
    t2.close()
    t1.close()
    assert (a.waiting_requests, a.waiting_tokens) == (0, 0)


def test_over_the_waiting_limits_nothing_is_streamed(limited):
    srv, key = limited
    admission = srv.server.gate.admission
    with srv.client(api_key=key, timeout=120) as c:
        held = [admission.ticket(), admission.ticket()]  # two answers waiting: the line is full
        got, err = received_before_error(c.ask_stream("kb", "What makes bread rise?", max_tokens=4))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-waiting-requests" in err.details()
        assert got == []
        held.pop().close()
        held[0].reserve(3990)  # one answer waiting with nearly all the tokens
        got, err = received_before_error(c.ask_stream("kb", "What makes bread rise?", max_tokens=64))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-waiting-tokens" in err.details()
        assert got == []  # the retrieval ran, but its citations were held back
        held[0].close()
        events = list(c.ask_stream("kb", "What makes bread rise?", max_tokens=4, ignore_eos=True))
        assert [e.WhichOneof("event") for e in events][0] == "context" and events[-1].final.completion_tokens == 4
    assert (admission.waiting_requests, admission.waiting_tokens) == (0, 0)


def test_a_passed_deadline_aborts_the_answer_and_frees_its_blocks(limited, monkeypatch):
    srv, key = limited
    engine = srv.server.generator.engine
    free = engine.num_free_blocks
    step = engine.step

    def slow_step():  # 200 tokens take 10 s: the 3 s deadline passes mid-answer
        time.sleep(0.05)
        return step()

    monkeypatch.setattr(engine, "step", slow_step)
    got = []
    with srv.client(api_key=key, timeout=3) as c:
        stream = c.ask_stream("kb", "Tell me everything about volcanoes.", max_tokens=200, ignore_eos=True)
        with pytest.raises(grpc.RpcError) as e:
            for event in stream:
                got.append(event)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert got and got[0].WhichOneof("event") == "context"  # it was generating when the deadline passed
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (engine.num_free_blocks != free or engine.has_unfinished_requests()):
        time.sleep(0.05)
    assert engine.num_free_blocks == free and not engine.has_unfinished_requests()
    assert srv.server.generator.metrics()["num_streams"] == 0


def test_a_key_over_its_token_rate_waits(tmp_path, tiny_model_dir):
    keys = KeyStore(tmp_path / "data")
    _, slow = keys.create(Role.ADMIN, name="slow", tokens_per_s=1)
    srv = ServerThread(tmp_path / "data", model=str(tiny_model_dir)).start()
    try:
        with srv.client(api_key=slow, timeout=120) as c:
            c.create_collection("kb")
            list(c.ingest("kb", RAG_DOCS[:1]))
            c.ask("kb", "volcanoes?", max_tokens=8, ignore_eos=True)  # charges its prompt and answer tokens
            with pytest.raises(grpc.RpcError) as e:
                c.search("kb", "volcanoes")
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "tokens per second" in e.value.details()
    finally:
        srv.stop()
