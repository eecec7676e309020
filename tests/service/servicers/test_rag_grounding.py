"""Grounded answers end to end: Ask over a real gRPC channel with the bundled generator, whose default is quote
decoding (its generation_config.json), and the grounding a request or the server names."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.llm.test_grounding import check_quoted
from tests.service.conftest import RAG_DOCS, start_rag_server

BUNDLED = Path(__file__).resolve().parents[3] / "models" / "pqrag-small"


@pytest.fixture(scope="module")
def bundled_server(tmp_path_factory):
    srv = start_rag_server(tmp_path_factory.mktemp("grounded") / "data", model=str(BUNDLED))
    yield srv
    srv.stop()


def passages_of(answer) -> dict[int, str]:
    texts = {d["id"]: d["text"] for d in RAG_DOCS}
    return {c["number"]: texts[c["doc_id"]] for c in answer["citations"]}


@pytest.mark.parametrize(
    "question",
    ["What makes sourdough bread rise?", "why do volcanoes erupt", "How many moons does Saturn have?"],
)
def test_bundled_model_quotes_and_cites_by_default(bundled_server, question):
    with bundled_server.client(timeout=120) as c:
        answer = c.ask("kb", question, num_passages=3)
        explicit = c.ask("kb", question, num_passages=3, grounding="quote")
    text = answer["answer"]
    assert text and text == explicit["answer"]
    finished = answer["final"]["finish_reason"] == "stop"
    check_quoted(" " + text, passages_of(answer), finished)  # the pipeline strips the first quote's space
    assert finished, f"a quoted answer of the bundled model ran to the length limit: {text!r}"


def test_free_grounding_is_the_unconstrained_answer(bundled_server, tmp_path):
    question = "What makes sourdough bread rise?"
    with bundled_server.client(timeout=120) as c:
        free = c.ask("kb", question, num_passages=3, grounding="free", max_tokens=40)
    # The same model with no grounding flag anywhere answers freely only when asked to: a server default of free.
    srv = start_rag_server(tmp_path / "data", model=str(BUNDLED), grounding="free")
    try:
        with srv.client(timeout=120) as c:
            default_free = c.ask("kb", question, num_passages=3, max_tokens=40)
            quoted = c.ask("kb", question, num_passages=3, max_tokens=40, grounding="quote")
            c.create_collection("kb2", grounding="quote")  # a collection's default beats the server's
            list(c.ingest("kb2", RAG_DOCS))
            by_collection = c.ask("kb2", question, num_passages=3, max_tokens=40)
            assert c.get_collection("kb2").default_grounding == 2  # GROUNDING_QUOTE, stored with the collection
    finally:
        srv.stop()
    assert default_free["answer"] == free["answer"]
    check_quoted(" " + quoted["answer"], passages_of(quoted), quoted["final"]["finish_reason"] == "stop")
    assert by_collection["answer"] == quoted["answer"]


def test_unknown_grounding_is_refused_by_the_client(bundled_server):
    with bundled_server.client(timeout=120) as c, pytest.raises(ValueError):
        c.ask("kb", "q", grounding="loose")


def test_cli_flags_name_the_domain_groundings():
    from rag.request import GROUNDINGS
    from service.cli import build_parser
    from service.cli_options import GROUNDINGS as CLI_GROUNDINGS

    assert CLI_GROUNDINGS == GROUNDINGS
    parser = build_parser()
    assert parser.parse_args(["ask", "q", "-c", "kb", "--grounding", "quote"]).grounding == "quote"
    assert parser.parse_args(["chat", "-c", "kb"]).grounding is None
    assert parser.parse_args(["serve", "--grounding", "free"]).grounding == "free"
