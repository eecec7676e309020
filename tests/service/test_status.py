"""Errors -> status codes: the table itself, and over a real channel: each domain error class gets its code with
its message, anything else (a plain ValueError included) is INTERNAL with the traceback logged, and the server
keeps serving either way."""

from __future__ import annotations

import logging

import grpc
import pytest

from common.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from service.status import STATUS_CODES, status_for
from tests.service.conftest import DOCS, ingest_all

S = grpc.StatusCode
CASES = [
    (NotFoundError("no collection 'x'"), S.NOT_FOUND),
    (AlreadyExistsError("'x' exists"), S.ALREADY_EXISTS),
    (InvalidArgumentError("k must be in 1..1000"), S.INVALID_ARGUMENT),
    (ResourceExhaustedError("queue full"), S.RESOURCE_EXHAUSTED),
    (FailedPreconditionError("no generator"), S.FAILED_PRECONDITION),
    (PermissionDeniedError("role too low"), S.PERMISSION_DENIED),
    (UnauthenticatedError("no key"), S.UNAUTHENTICATED),
    (UnavailableError("shutting down"), S.UNAVAILABLE),
    (ValueError("a bug of ours"), S.INTERNAL),  # not a user's mistake unless the domain says so
    (KeyError("bug"), S.INTERNAL),
    (RuntimeError("bug"), S.INTERNAL),
]


@pytest.mark.parametrize("exc, code", CASES, ids=lambda v: type(v).__name__ if isinstance(v, Exception) else v.name)
def test_status_for_maps_exactly_the_domain_errors(exc, code):
    assert status_for(exc) == code


def test_subclasses_take_their_base_class_code():
    from llm.scheduler import QueueFullError
    from rag.pipeline import GeneratorUnavailableError

    assert status_for(QueueFullError("full")) == S.RESOURCE_EXHAUSTED
    assert status_for(GeneratorUnavailableError("none")) == S.FAILED_PRECONDITION
    assert set(STATUS_CODES.values()) == {S.NOT_FOUND, S.ALREADY_EXISTS, S.INVALID_ARGUMENT, S.RESOURCE_EXHAUSTED,
                                          S.FAILED_PRECONDITION, S.PERMISSION_DENIED, S.UNAUTHENTICATED,
                                          S.UNAVAILABLE}  # fmt: skip


def test_errors_raised_inside_servicers_get_their_code_and_the_server_keeps_serving(
    server, client, monkeypatch, caplog
):
    client.create_collection("kb")
    collections = server.server.collections
    for exc, code in CASES:

        def fail(*args, exc=exc, **kwargs):
            raise exc

        monkeypatch.setattr(collections, "get", fail)  # the domain call every data RPC starts with
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="pqrag.server"):
            for call in (lambda: client.get_collection("kb"), lambda: ingest_all(client, "kb", DOCS[:1])):
                with pytest.raises(grpc.RpcError) as e:  # unary, then a bidi stream
                    call()
                assert e.value.code() == code, (exc, e.value.details())
                assert str(exc).strip("'") in e.value.details()
        logged = [r for r in caplog.records if r.exc_info and r.exc_info[1] is exc]
        if code is S.INTERNAL:
            assert e.value.details().startswith(f"internal error: {type(exc).__name__}")
            assert len(logged) == 2  # with the traceback, once per call
        else:
            assert not logged  # the caller's mistake is no server error
        monkeypatch.undo()
        assert client.get_collection("kb").name == "kb"
    metrics = server.server.metrics.render().decode()
    assert 'pqrag_rpc_requests_total{code="INTERNAL",method="GetCollection"} 3.0' in metrics
    assert 'pqrag_rpc_requests_total{code="INVALID_ARGUMENT",method="IngestStream"} 1.0' in metrics


def test_long_messages_are_cut_before_they_reach_the_wire(server, client, monkeypatch):
    """A message quoting a huge input would pass gRPC's metadata limit (the call would end RESOURCE_EXHAUSTED
    instead of with its own code): every message is cut to MAX_DETAILS characters."""
    from service.status import MAX_DETAILS

    def fail(*args, **kwargs):
        raise InvalidArgumentError("x" * 100_000)

    monkeypatch.setattr(server.server.collections, "get", fail)
    with pytest.raises(grpc.RpcError) as e:
        client.get_collection("kb")
    assert e.value.code() == S.INVALID_ARGUMENT and len(e.value.details()) <= MAX_DETAILS
