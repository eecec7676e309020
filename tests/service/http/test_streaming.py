"""Server-sent events on the wire (raw HTTP, no SDK), errors inside and before a stream, and clients that go away:
a disconnect aborts the request and frees its KV blocks, whether the answer was streaming or not."""

from __future__ import annotations

import json
import socket

from tests.service.http.conftest import engine_stats, wait_for


def sse_events(response) -> list[str]:
    """The data fields of a text/event-stream body, checking the framing: every event is one `data: ` line
    followed by a blank line."""
    body = response.read().decode()
    assert body.endswith("\n\n")
    events = body[:-2].split("\n\n")
    for e in events:
        assert e.startswith("data: ") and "\n" not in e, e
    return [e[len("data: ") :] for e in events]


def test_chat_stream_is_data_lines_then_done(http, model):
    request = {
        "model": model,
        "messages": [{"role": "user", "content": "What makes sourdough rise?"}],
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        "rag": {"collection": "kb", "top_k": 1},
    }
    with http.stream("POST", "/v1/chat/completions", json=request) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        data = sse_events(r)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    first, *middle, last_choice, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["citations"][0]["document_id"] == "bread"
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in middle) and len(middle) >= 1
    assert last_choice["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4
    assert {c["id"] for c in chunks} == {first["id"]} and {c["created"] for c in chunks} == {first["created"]}


def test_completion_stream_without_usage_and_errors_before_the_stream_keep_their_status(http, model):
    with http.stream("POST", "/v1/completions", json={"prompt": "Saturn", "max_tokens": 2, "stream": True}) as r:
        data = sse_events(r)
    chunks = [json.loads(d) for d in data[:-1]]
    assert data[-1] == "[DONE]" and all("usage" not in c for c in chunks)
    assert all(c["object"] == "text_completion" for c in chunks) and chunks[-1]["choices"][0]["finish_reason"]
    # A bad streamed request is answered with its status and a JSON error, not a 200 stream.
    bad = {"prompt": "x", "max_tokens": 100_000, "stream": True}
    r = http.post("/v1/completions", json=bad)
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    assert "exceeds the model's context" in r.json()["error"]["message"]
    r = http.post(
        "/v1/chat/completions",
        json={**bad, "messages": [{"role": "user", "content": "x"}], "rag": {"collection": "no"}},
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_closing_a_stream_aborts_the_request_and_frees_its_blocks(http, http_server, model):
    stats = engine_stats(http_server)
    aborted, total = stats["num_aborted_requests"], stats["num_blocks"]
    request = {
        "model": model,
        "messages": [{"role": "user", "content": "Why do volcanoes erupt?"}],
        "max_tokens": 300,
        "ignore_eos": True,
        "stream": True,
        "rag": {"collection": "kb"},
    }
    with http.stream("POST", "/v1/chat/completions", json=request) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert "citations" in next(lines)
        assert next(line for line in lines if line.startswith("data: ")).startswith('data: {"id"')
        assert engine_stats(http_server)["num_free_blocks"] < total  # the answer holds KV blocks now
    # closing the response closed the connection mid-stream
    assert wait_for(lambda: engine_stats(http_server)["num_aborted_requests"] == aborted + 1)
    assert wait_for(lambda: engine_stats(http_server)["num_free_blocks"] == total)
    assert engine_stats(http_server)["num_running"] == 0


def test_a_client_gone_before_a_whole_answer_aborts_it_too(http_server, model):
    stats = engine_stats(http_server)
    aborted, total = stats["num_aborted_requests"], stats["num_blocks"]
    body = json.dumps({"model": model, "prompt": "Lava", "max_tokens": 400, "ignore_eos": True}).encode()
    host, port = http_server.server.http.host, http_server.server.http.port
    with socket.create_connection((host, port)) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body) + body
        )
        assert wait_for(lambda: engine_stats(http_server)["num_running"] == 1)
    assert wait_for(lambda: engine_stats(http_server)["num_aborted_requests"] == aborted + 1)
    assert wait_for(lambda: engine_stats(http_server)["num_free_blocks"] == total)
