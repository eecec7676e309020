"""The official openai client (sync, streaming, its error classes) against a real server on port 0: models,
chat completions, completions, embeddings, the RAG extension with citations."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest

from service.http.context import model_name
from tests.service.conftest import RAG_DOCS


def test_models_list_the_generator_and_the_collections_embedders(oai, http_server, tiny_model_dir):
    models = {m.id: m for m in oai.models.list()}
    served = model_name(tiny_model_dir)
    assert http_server.server.http.ctx.served_model_name == served  # default: the model directory's name
    assert set(models) == {served, "all-MiniLM-L6-v2"}
    assert models[served].owned_by == "pqrag" and models[served].type == "generator"
    assert models[served].max_model_len == http_server.server.generator.max_model_len
    assert models["all-MiniLM-L6-v2"].type == "embedder" and "kb" in models["all-MiniLM-L6-v2"].collections


def test_chat_completion_with_sampling_options_and_usage(oai, model):
    kwargs = dict(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about volcanoes."}],
        max_completion_tokens=6,
        temperature=0.8,
        top_p=0.9,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        n=1,
        extra_body={"ignore_eos": True},
    )
    a = oai.chat.completions.create(**kwargs)
    b = oai.chat.completions.create(**kwargs)
    assert a.object == "chat.completion" and a.id.startswith("chatcmpl-") and a.model == model
    choice = a.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "length" and choice.index == 0
    assert a.usage.completion_tokens == 6 and a.usage.prompt_tokens > 0
    assert a.usage.total_tokens == a.usage.prompt_tokens + 6
    assert choice.message.content == b.choices[0].message.content  # same seed, same sample
    assert not hasattr(a, "citations") or a.model_extra.get("citations") is None  # no RAG: no citations field


def test_chat_logprobs_name_each_token_with_its_top_alternatives(oai, model, http_server):
    r = oai.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body={"ignore_eos": True},
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        best = entry.top_logprobs[0]
        assert best.logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob
        assert entry.logprob == pytest.approx(best.logprob)  # greedy: the sampled token is the most likely one
        assert entry.token == best.token and entry.bytes == best.bytes
    # The bytes of the tokens spell the answer (a byte-level token may be half a character: its text alone is not).
    assert b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace") == r.choices[0].message.content


def test_chat_streaming_with_include_usage(oai, model):
    request = dict(
        model=model,
        messages=[{"role": "user", "content": "Why do volcanoes erupt?"}],
        max_tokens=5,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    chunks = list(oai.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == oai.chat.completions.create(**request).choices[0].message.content  # greedy: the same answer


def test_rag_chat_carries_citations_top_level_and_on_the_first_chunk(oai, model):
    request = dict(
        model=model,
        messages=[{"role": "user", "content": "What makes sourdough bread rise?"}],
        max_tokens=6,
        extra_body={"rag": {"collection": "kb", "top_k": 2}, "ignore_eos": True},
    )
    whole = oai.chat.completions.create(**request)
    cites = whole.model_extra["citations"]
    assert [c["number"] for c in cites] == [1, 2]
    first = cites[0]
    assert set(first) == {"number", "document_id", "chunk_id", "score", "source", "start", "end", "snippet"}
    assert first["document_id"] == "bread" and first["source"] == "bread.md" and "wild yeast" in first["snippet"]
    assert (first["start"], first["end"]) == (0, len(RAG_DOCS[1]["text"]))
    # The prompt holds the passages: many more prompt tokens than the question alone.
    assert whole.usage.prompt_tokens > 60 and whole.usage.completion_tokens == 6

    chunks = list(oai.chat.completions.create(**request, stream=True))
    assert chunks[0].model_extra["citations"] == cites
    assert all("citations" not in c.model_extra for c in chunks[1:])
    # RAG answers are greedy unless asked otherwise (the domain's default): the stream says what the answer said.
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content


def test_rag_filter_and_a_conversation(oai, model):
    r = oai.chat.completions.create(
        model=model,
        messages=[
            {"role": "user", "content": "Tell me about the Sicilian Defence."},
            {"role": "assistant", "content": "It is a chess opening."},
            {"role": "user", "content": [{"type": "text", "text": "What does it answer 1.e4 with?"}]},
        ],
        max_tokens=3,
        extra_body={"rag": {"collection": "kb", "top_k": 3, "filter": {"topic": "space"}}},
    )
    assert [c["document_id"] for c in r.model_extra["citations"]] == ["saturn"]  # the filter holds


def test_rag_grounding_quote_answers_only_with_cited_quotes(oai, model):
    from tests.llm.test_grounding import check_quoted

    r = oai.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What makes sourdough bread rise?"}],
        max_tokens=40,
        extra_body={"rag": {"collection": "kb", "top_k": 2, "grounding": "quote"}},
    )
    texts = {d["id"]: d["text"] for d in RAG_DOCS}
    passages = {c["number"]: texts[c["document_id"]] for c in r.model_extra["citations"]}
    answer = r.choices[0].message.content
    check_quoted(" " + answer, passages, r.choices[0].finish_reason == "stop")
    with pytest.raises(openai.BadRequestError, match="grounding must be one of free, quote"):
        oai.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "q"}],
            extra_body={"rag": {"collection": "kb", "grounding": "strict"}},
        )


def test_rag_grounding_extract_answers_with_the_reader_even_without_a_generator(oai, model, tmp_path):
    from rag.prompt import NO_ANSWER
    from service.config import BUNDLED_READER
    from tests.service.http.conftest import base_url, start_http_server
    from tests.service.servicers.test_rag_grounding import check_extracted

    question = [{"role": "user", "content": "What makes sourdough bread rise?"}]
    extract = {"rag": {"collection": "kb", "top_k": 3, "grounding": "extract"}}
    with pytest.raises(openai.APIStatusError, match="--reader") as e:  # the package's server: no reader
        oai.chat.completions.create(model=model, messages=question, extra_body=extract)
    assert e.value.status_code == 503
    srv = start_http_server(tmp_path / "data", reader=str(BUNDLED_READER))  # --no-generator, the bundled reader
    try:
        with httpx.Client(base_url=base_url(srv), timeout=120) as h:  # REST: a collection whose default is extract
            assert h.post("/v1/collections", json={"name": "kb", "grounding": "extract"}).status_code == 201
            assert h.post("/v1/collections/kb/documents", json={"documents": RAG_DOCS}).status_code == 200
            by_default = h.post("/v1/chat/completions", json={"messages": question, "rag": {"collection": "kb"}})
        with openai.OpenAI(base_url=base_url(srv) + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
            whole = c.chat.completions.create(model="any", messages=question, extra_body=extract)
            chunks = list(c.chat.completions.create(model="any", messages=question, extra_body=extract, stream=True))
            text = c.completions.create(model="any", prompt=question[0]["content"], extra_body=extract)
            free = {"rag": {"collection": "kb", "grounding": "free"}}
            with pytest.raises(openai.APIStatusError, match="--no-generator") as e:  # generating needs a generator
                c.chat.completions.create(model="any", messages=question, extra_body=free)
            assert e.value.status_code == 503
    finally:
        srv.stop()
    texts = {d["id"]: d["text"] for d in RAG_DOCS}
    cites = whole.model_extra["citations"]
    answer = whole.choices[0].message.content
    check_extracted(answer, {x["number"]: texts[x["document_id"]] for x in cites})
    assert answer == NO_ANSWER or answer.endswith("]")
    assert whole.choices[0].finish_reason == "stop" and whole.usage.completion_tokens == 0
    assert chunks[0].model_extra["citations"] == cites
    assert "".join(x.choices[0].delta.content or "" for x in chunks if x.choices) == answer
    assert text.choices[0].text == answer
    assert by_default.status_code == 200 and by_default.json()["choices"][0]["message"]["content"] == answer


def test_text_completion_whole_streamed_and_with_logprobs(oai, model):
    r = oai.completions.create(
        model=model,
        prompt="Volcanoes erupt when",
        max_tokens=4,
        temperature=0,
        logprobs=2,
        extra_body={"ignore_eos": True},
    )
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.usage.completion_tokens == 4
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert lp.text_offset[0] == 0 and all(len(top) <= 2 for top in lp.top_logprobs)
    chunks = list(
        oai.completions.create(
            model=model,
            prompt="Volcanoes erupt when",
            max_tokens=4,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"

    tokens = oai.completions.create(model=model, prompt=[5, 6, 7], max_tokens=2, extra_body={"ignore_eos": True})
    assert tokens.usage.prompt_tokens == 3

    rag = oai.completions.create(
        model=model, prompt="How many moons does Saturn have?", max_tokens=3, extra_body={"rag": {"collection": "kb"}}
    )
    assert rag.model_extra["citations"][0]["document_id"] == "saturn"


def test_embeddings_float_and_base64_match_the_collections_embedder(oai, http_server):
    texts = ["Saturn has rings.", "Sourdough rises."]
    floats = oai.embeddings.create(model="all-MiniLM-L6-v2", input=texts, encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1] and floats.model == "all-MiniLM-L6-v2"
    x = np.array([d.embedding for d in floats.data], dtype=np.float32)
    expected = http_server.server.collections.get("kb").embedder.embed(texts)
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-6)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 4
    # One text (a batch of one pads differently from a batch of two: equal to float32 rounding, not bitwise).
    one = oai.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0], encoding_format="float").data[0].embedding
    np.testing.assert_allclose(one, x[0], rtol=0, atol=1e-6)
    # The SDK asks for base64 by default and decodes it itself: the same float32 values, bit for bit.
    default = oai.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0])
    np.testing.assert_array_equal(np.array(default.data[0].embedding, dtype=np.float32), np.float32(one))
    raw = oai.embeddings.with_raw_response.create(model="all-MiniLM-L6-v2", input=texts[0], encoding_format="base64")
    b64 = raw.http_response.json()["data"][0]["embedding"]
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(b64), dtype="<f4"), np.float32(one))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (dict(model="gpt-4"), openai.NotFoundError, "model 'gpt-4' not found"),
        (dict(extra_body={"rag": {"collection": "nope"}}), openai.NotFoundError, "collection 'nope' not found"),
        (dict(temperature=-1), openai.BadRequestError, "temperature must be >= 0"),
        (dict(n=2), openai.BadRequestError, "n must be 1"),
        (dict(max_tokens=100_000), openai.BadRequestError, "exceeds the model's context"),
        (dict(messages=[{"role": "assistant", "content": "hi"}]), openai.BadRequestError, "the last message must"),
        (dict(messages=[{"role": "tool", "content": "x"}]), openai.BadRequestError, "role must be one of"),
        (dict(tools=[{"type": "function", "function": {"name": "f"}}]), openai.BadRequestError, "tools"),
        (dict(extra_body={"rag": {"collection": "kb", "top_k": 0}}), openai.BadRequestError, "num_passages"),
        (dict(extra_body={"rag": {"collection": "kb", "bogus": 1}}), openai.BadRequestError, "rag.bogus"),
        (dict(logprobs=True, extra_body={"rag": {"collection": "kb"}}), openai.BadRequestError, "RAG answers"),
    ],
)
def test_errors_raise_the_sdks_classes_with_the_message(oai, model, call, error, message):
    request = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2, **call}
    with pytest.raises(error, match=message) as e:
        oai.chat.completions.create(**request)
    body = e.value.body
    assert set(body) == {"message", "type", "param", "code"} and message in body["message"]


def test_unknown_embedder_and_bad_input(oai):
    with pytest.raises(openai.NotFoundError, match="not an embedder"):
        oai.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.BadRequestError, match="empty") as e:
        oai.embeddings.create(model="all-MiniLM-L6-v2", input=["ok", " "])
    assert e.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError, match="token arrays"):
        oai.embeddings.create(model="all-MiniLM-L6-v2", input=[[1, 2, 3]])
    with pytest.raises(openai.BadRequestError, match="at most 256 word pieces|reads at most"):
        oai.embeddings.create(model="all-MiniLM-L6-v2", input="word " * 400)
