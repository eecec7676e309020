"""Errors in OpenAI's shape with the status the openai SDK maps to its classes: the domain's table, 401/403 from the
authorization check, 429 when the engine's queue is full, 500 for our own bugs (logged; the server keeps serving)."""

from __future__ import annotations

import threading

import openai
import pytest

from common.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    TooManyRequestsError,
    UnauthenticatedError,
    UnavailableError,
)
from llm.scheduler import QueueFullError
from rag.pipeline import GeneratorUnavailableError
from service.http import openai_routes
from service.http.auth import allow_all
from service.http.errors import ApiError, status_of
from tests.service.http.conftest import base_url, engine_stats, start_http_server, wait_for


@pytest.mark.parametrize(
    "exc, status",
    [
        (NotFoundError("x"), 404),
        (AlreadyExistsError("x"), 409),
        (InvalidArgumentError("x"), 400),
        (QueueFullError("x"), 429),  # before its base class: retrying later helps
        (ResourceExhaustedError("x"), 413),
        (TooManyRequestsError("x"), 429),
        (UnauthenticatedError("x"), 401),
        (PermissionDeniedError("x"), 403),
        (GeneratorUnavailableError("x"), 503),
        (FailedPreconditionError("x"), 503),
        (UnavailableError("x"), 503),
        (ValueError("x"), 500),  # not a common.errors class: ours
    ],
)
def test_status_table(exc, status):
    assert status_of(exc)[0] == status


def test_keys_are_checked_by_the_servers_authorizer(http_server, oai, http, model):
    def authorize(key, action, collection):
        if key is None or key == "unused":
            raise ApiError(401, "invalid API key", code="invalid_api_key")
        if action == "admin" or collection == "secret":
            raise ApiError(403, f"this key may not {action} {collection}", code="forbidden")

    ctx = http_server.server.http.ctx
    ctx.authorize = authorize
    try:
        with pytest.raises(openai.AuthenticationError, match="invalid API key"):
            oai.models.list()
        keyed = oai.with_options(api_key="reader")
        assert keyed.models.list().data
        with pytest.raises(openai.PermissionDeniedError, match="may not generate secret"):
            keyed.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "x"}], extra_body={"rag": {"collection": "secret"}}
            )
        r = http.post("/v1/collections", json={"name": "x"}, headers={"authorization": "Bearer reader"})
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
        r = http.get("/v1/collections", headers={"authorization": "Basic abc"})  # not a bearer key: none
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert http.get("/health").status_code == 200  # probes need no key
    finally:
        ctx.authorize = allow_all


def test_our_bugs_are_500s_in_openai_shape_and_the_server_keeps_serving(oai, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(openai_routes, "embed", broken)
    with pytest.raises(openai.InternalServerError, match="internal error: RuntimeError: boom"):
        oai.embeddings.create(model="all-MiniLM-L6-v2", input="x")
    monkeypatch.undo()
    assert oai.embeddings.create(model="all-MiniLM-L6-v2", input="x").data


def test_a_full_queue_is_a_429(tmp_path, tiny_model_dir):
    srv = start_http_server(tmp_path / "data", model=str(tiny_model_dir), engine={"max_num_seqs": 1, "max_waiting": 1})
    url = base_url(srv)
    request = {
        "model": srv.server.http.ctx.served_model_name,
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 300,
        "stream": True,
        "extra_body": {"ignore_eos": True},
    }
    try:
        with openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as oai:
            running = oai.chat.completions.create(**request)  # holds the one running slot
            next(iter(running))
            waiting = threading.Thread(target=lambda: list(oai.chat.completions.create(**request)))
            waiting.start()  # queued behind it
            assert wait_for(lambda: engine_stats(srv)["num_waiting"] == 1)
            with pytest.raises(openai.RateLimitError, match="waiting queue is full") as e:
                oai.chat.completions.create(**{**request, "stream": False})
            assert e.value.body["code"] == "rate_limit_exceeded" and e.value.body["type"] == "rate_limit_error"
            running.close()
            waiting.join(60)
            assert not waiting.is_alive()
    finally:
        srv.stop()
