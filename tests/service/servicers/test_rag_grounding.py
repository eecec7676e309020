"""Grounded answers end to end: Ask over a real gRPC channel with the bundled generator, whose default is extract
(its generation_config.json), which is quote decoding on a server without a reader, and the grounding a request or the server names; extract answers from the
bundled extractive reader, on a server with no generator, and refused on a server without a reader."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import grpc
import pytest

from rag.prompt import NO_ANSWER
from service.config import BUNDLED_READER
from tests.llm.test_grounding import check_quoted
from tests.service.conftest import RAG_DOCS, ServerThread, start_rag_server

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
def test_bundled_model_quotes_and_cites_by_default_without_a_reader(bundled_server, question):
    with bundled_server.client(timeout=120) as c:
        answer = c.ask("kb", question, num_passages=3)
        explicit = c.ask("kb", question, num_passages=3, grounding="quote")
    text = answer["answer"]
    assert text and text == explicit["answer"]
    finished = answer["final"]["finish_reason"] == "stop"
    check_quoted(" " + text, passages_of(answer), finished)  # the pipeline strips the first quote's space
    assert finished, f"a quoted answer of the bundled model ran to the length limit: {text!r}"


def test_bundled_model_with_the_bundled_reader_answers_extract_by_default(tmp_path):
    srv = start_rag_server(tmp_path / "data", model=str(BUNDLED), reader=str(BUNDLED_READER))
    try:
        with srv.client(timeout=120) as c:
            by_default = c.ask("kb", "What makes sourdough bread rise?", num_passages=3)
            extract = c.ask("kb", "What makes sourdough bread rise?", num_passages=3, grounding="extract")
            quote = c.ask("kb", "What makes sourdough bread rise?", num_passages=3, grounding="quote")
    finally:
        srv.stop()
    assert by_default["answer"] == extract["answer"] and by_default["final"]["completion_tokens"] == 0
    check_extracted(by_default["answer"], passages_of(by_default))
    assert quote["final"]["completion_tokens"] > 0  # the generator still answers when asked to


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


# --- grounding extract: the extractive reader (rag/reader.py) answers, with or without a generator ---------------


@pytest.fixture(scope="module")
def reader_server(tmp_path_factory):
    """A server with the bundled reader and no generator (pqrag serve --no-generator), a collection "kb"."""
    srv = start_rag_server(tmp_path_factory.mktemp("extract") / "data", reader=str(BUNDLED_READER))
    yield srv
    srv.stop()


def check_extracted(text: str, passages: dict[int, str]) -> None:
    """An extract answer: a verbatim span of passage n (its whitespace collapsed) and " [n]", or NO_ANSWER."""
    if text == NO_ANSWER:
        return
    m = re.fullmatch(r"(.+) \[(\d+)\]", text, re.S)
    assert m is not None, f"not a cited span: {text!r}"
    span, n = m.group(1), int(m.group(2))
    assert n in passages, f"cites [{n}], not a passage of the context {sorted(passages)}"
    assert span.strip() and span in " ".join(passages[n].split()), f"{span!r} is not in passage [{n}]"


@pytest.mark.parametrize(
    "question", ["What makes sourdough bread rise?", "why do volcanoes erupt", "How many moons does Saturn have?"]
)
def test_extract_answers_a_cited_span_of_a_passage(reader_server, question):
    with reader_server.client(timeout=120) as c:
        events = list(c.ask_stream("kb", question, num_passages=3, grounding="extract"))
        again = c.ask("kb", question, num_passages=3, grounding="extract")
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["context", "delta", "final"]
    texts = {d["id"]: d["text"] for d in RAG_DOCS}
    cites = events[0].context.citations
    assert [x.number for x in cites] == list(range(1, len(cites) + 1)) and len(cites) == 3
    check_extracted(events[1].delta.text, {x.number: texts[x.document_id] for x in cites})
    final = events[2].final
    assert final.finish_reason == "stop" and final.prompt_tokens == final.completion_tokens == 0  # nothing generated
    assert 0 < final.retrieval_ms <= final.time_to_first_token_ms <= final.total_ms
    assert again["answer"] == events[1].delta.text  # the reader is deterministic


def test_a_server_without_a_generator_answers_extract_and_refuses_the_rest(reader_server):
    with reader_server.client(timeout=120) as c:
        chat = c.chat("kb", [{"role": "user", "content": "What is in Saturn's rings?"}], grounding="extract")
        check_extracted(chat["answer"], passages_of(chat))
        for grounding in ("free", "quote"):  # the generator's groundings: refused, naming the way out
            with pytest.raises(grpc.RpcError) as e:
                c.ask("kb", "What is lava?", grounding=grounding)
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "--no-generator" in e.value.details()
        unset = c.ask("kb", "What is lava?")  # no grounding named: the reader answers (extract)
        assert unset["answer"] == c.ask("kb", "What is lava?", grounding="extract")["answer"]
        c.create_collection("kb-extract", grounding="extract")  # a collection's default: extract, no flag needed
        list(c.ingest("kb-extract", RAG_DOCS))
        assert c.get_collection("kb-extract").default_grounding == 3  # GROUNDING_EXTRACT, stored with it
        by_default = c.ask("kb-extract", "What makes sourdough bread rise?", num_passages=3)
        explicit = c.ask("kb", "What makes sourdough bread rise?", num_passages=3, grounding="extract")
    check_extracted(by_default["answer"], passages_of(by_default))
    assert by_default["answer"] == explicit["answer"]
    assert reader_server.server.generator is None and reader_server.server.reader is not None


def test_a_collections_reader_threshold_decides_its_extract_answers(reader_server):
    from rag.prompt import NO_ANSWER

    with reader_server.client(timeout=120) as c:
        for name, threshold in (("kb-strict", 100.0), ("kb-lenient", -100.0)):
            c.create_collection(name, reader_threshold=threshold)
            list(c.ingest(name, RAG_DOCS))
        question = "What makes sourdough bread rise?"
        strict = c.ask("kb-strict", question, num_passages=3, grounding="extract")
        lenient = c.ask("kb-lenient", question, num_passages=3, grounding="extract")
    assert strict["answer"] == NO_ANSWER  # no margin reaches 100
    assert lenient["answer"] != NO_ANSWER  # every question is answered from the same passages
    check_extracted(lenient["answer"], passages_of(lenient))


def test_an_updated_reader_threshold_decides_the_next_extract_answers(reader_server):
    question = "What makes sourdough bread rise?"
    with reader_server.client(timeout=120) as c:
        c.create_collection("kb-updated", grounding="extract")
        list(c.ingest("kb-updated", RAG_DOCS))
        own = c.ask("kb-updated", question, num_passages=3)["answer"]  # the reader's own threshold
        c.update_collection("kb-updated", reader_threshold=100.0)
        assert c.ask("kb-updated", question, num_passages=3)["answer"] == NO_ANSWER  # no margin reaches 100
        c.update_collection("kb-updated", reader_threshold=-100.0)
        lenient = c.ask("kb-updated", question, num_passages=3)
        assert lenient["answer"] != NO_ANSWER  # every question is answered
        check_extracted(lenient["answer"], passages_of(lenient))
        c.update_collection("kb-updated", clear=["reader_threshold"])  # back to the reader's own
        assert c.ask("kb-updated", question, num_passages=3)["answer"] == own
        c.update_collection("kb-updated", grounding="quote")  # the collection's default: quote, needs a generator
        with pytest.raises(grpc.RpcError) as e:
            c.ask("kb-updated", question)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert c.health() == "SERVING"


def test_a_collections_min_similarity_declines_questions_far_from_it(reader_server):
    sourdough, dubai = "What makes sourdough bread rise?", "What is the tallest building in Dubai?"
    with reader_server.client(timeout=120) as c:
        c.create_collection("kb-cut", reader_threshold=-100.0)  # the reader alone answers everything
        list(c.ingest("kb-cut", RAG_DOCS))
        assert c.ask("kb-cut", dubai, num_passages=3, grounding="extract")["answer"] != NO_ANSWER
        c.update_collection("kb-cut", min_similarity=0.4)  # the kb's chunks are about bread, Saturn, chess...
        far = c.ask("kb-cut", dubai, num_passages=3, grounding="extract")
        near = c.ask("kb-cut", sourdough, num_passages=3, grounding="extract")
        assert far["answer"] == NO_ANSWER and len(far["citations"]) == 3  # what was found is still shown
        check_extracted(near["answer"], passages_of(near))
        assert near["answer"] != NO_ANSWER
        far_words = "Is the tallest building in Dubai made of bread?"  # far (~0.24), yet sharing a word with one
        assert c.ask("kb-cut", far_words, num_passages=3, grounding="extract")["answer"] == NO_ANSWER
        lexical = c.ask("kb-cut", far_words, num_passages=3, grounding="extract", mode="lexical")
        assert lexical["answer"] != NO_ANSWER  # a lexical search measures no distance: the cut cannot apply
        c.update_collection("kb-cut", clear=["min_similarity"])
        assert c.ask("kb-cut", dubai, num_passages=3, grounding="extract")["answer"] != NO_ANSWER
        assert c.get_collection("kb-cut").HasField("min_similarity") is False


def test_an_extract_answer_cites_the_passage_its_span_is_in(tmp_path):
    """The bundled reader with its no-answer threshold lowered always answers a span: the citation path."""
    eager = tmp_path / "eager-reader"
    shutil.copytree(BUNDLED_READER, eager)
    cfg = json.loads((eager / "reader_config.json").read_text())
    (eager / "reader_config.json").write_text(json.dumps({**cfg, "null_threshold": -1e9}))
    srv = start_rag_server(tmp_path / "data", reader=str(eager))
    try:
        with srv.client(timeout=120) as c:
            answers = [c.ask("kb", q, num_passages=3, grounding="extract") for q in ("What makes bread rise?", "lava")]
    finally:
        srv.stop()
    for answer in answers:
        assert answer["answer"] != NO_ANSWER
        check_extracted(answer["answer"], passages_of(answer))


def test_a_server_without_a_reader_refuses_extract_and_keeps_serving(rag_server):
    assert rag_server.config.reader is None  # pqrag serve --reader none
    with rag_server.client(timeout=120) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.ask("kb", "What makes sourdough bread rise?", grounding="extract")
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "--reader" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            c.chat("kb", [{"role": "user", "content": "q"}], grounding="extract")
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "--reader" in e.value.details()
        answer = c.ask("kb", "What makes sourdough bread rise?", max_tokens=4, ignore_eos=True)  # still serving
    assert answer["final"]["completion_tokens"] == 4 and answer["citations"]


def test_a_reader_directory_that_does_not_hold_a_reader_is_refused_at_startup(tmp_path):
    missing = tmp_path / "no-such-reader"
    with pytest.raises(ValueError, match=f"cannot load the reader in {re.escape(str(missing))}.*--reader none"):
        ServerThread(tmp_path / "data", reader=str(missing)).start()
    corrupt = tmp_path / "corrupt-reader"
    shutil.copytree(BUNDLED_READER, corrupt)
    (corrupt / "reader.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=f"cannot load the reader in {re.escape(str(corrupt))}"):
        ServerThread(tmp_path / "data2", reader=str(corrupt)).start()


def test_the_bundled_reader_is_the_default_and_the_cli_picks_another_or_none(tmp_path):
    from service.cli import build_parser
    from service.cli_options import serve_config
    from service.config import ServerConfig

    assert BUNDLED_READER.endswith(os.path.join("models", "pqrag-reader"))
    assert ServerConfig().reader == BUNDLED_READER and os.path.isfile(
        os.path.join(BUNDLED_READER, "reader.safetensors")
    )
    parser = build_parser()
    base = ["serve", "--data-dir", str(tmp_path)]
    assert serve_config(parser.parse_args(base))["reader"] == BUNDLED_READER
    assert serve_config(parser.parse_args([*base, "--reader", str(tmp_path / "r")]))["reader"] == str(tmp_path / "r")
    assert serve_config(parser.parse_args([*base, "--reader", "none"]))["reader"] is None
    assert (
        serve_config(parser.parse_args([*base, "--no-generator", "--grounding", "extract"]))["grounding"] == "extract"
    )
    assert parser.parse_args(["ask", "q", "-c", "kb", "--grounding", "extract"]).grounding == "extract"
    assert parser.parse_args(["chat", "-c", "kb", "--grounding", "extract"]).grounding == "extract"
    assert parser.parse_args(["collections", "create", "kb", "--grounding", "extract"]).grounding == "extract"
