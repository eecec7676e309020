"""The answer pipeline on stand-ins for the collections and the generator: event order, what is retrieved with
what, the prompt the generator gets, timings, and the errors a caller can see."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from common.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from llm.generation_config import GenerationConfig
from rag.pipeline import AnswerEnd, Context, GeneratorUnavailableError, RagPipeline, TextDelta
from rag.request import AnswerRequest
from tests.rag.conftest import hit


class FakeCollection:
    def __init__(self, hits, grounding=None, reader_threshold=None, min_similarity=None, nearest_score=0.5):
        self.hits, self.searches, self.modes = hits, [], []
        # CollectionConfig's default grounding, reader threshold and similarity cut
        self.config = SimpleNamespace(
            grounding=grounding, reader_threshold=reader_threshold, min_similarity=min_similarity
        )
        self.nearest_score = nearest_score  # SearchResult's: the nearest chunk's dense score (None: not measured)

    def search(self, query, k, filter, mode=None, **fusion):
        self.searches.append((query, k, filter))
        self.modes.append((mode, fusion))
        return SimpleNamespace(hits=self.hits[:k], nearest_score=self.nearest_score)


class FakeCollections:
    def __init__(self, coll):
        self.coll = coll

    def get(self, name):
        if name != "kb":
            raise NotFoundError(f"collection {name!r} not found")
        return self.coll


class FakeGenerator:
    """Streams the deltas of AsyncLLM.generate: a few texts, the last one finished."""

    def __init__(self, tok, texts=("Eta", " theta", ""), finish_reason="length", window=512, generation_config=None):
        self.tokenizer, self.texts, self.finish_reason = tok, texts, finish_reason
        self.max_model_len = window
        self.generation_config = generation_config or GenerationConfig()
        self.prompts = []

    async def generate(self, prompt_token_ids, params, request_id):
        self.prompts.append((prompt_token_ids, params))
        for i, text in enumerate(self.texts, start=1):
            last = i == len(self.texts)
            yield SimpleNamespace(
                text_delta=text,
                num_generated_tokens=i,
                finished=last,
                finish_reason=self.finish_reason if last else None,
            )


async def run_inline(fn, *args, **kwargs):
    return fn(*args, **kwargs)


def answer(pipeline, request):
    async def collect():
        return [e async for e in pipeline.answer(request)]

    return asyncio.run(collect())


@pytest.fixture
def coll():
    return FakeCollection([hit("b", 2, 0.9, 38, 53), hit("a", 1, 0.2, 0, 17)])


def test_events_come_in_order_with_the_numbered_context_and_the_counts(tok, coll):
    gen = FakeGenerator(tok)
    request = AnswerRequest.ask("kb", "What follows eta?", num_passages=2, filter={"lang": "en"})
    events = answer(RagPipeline(FakeCollections(coll), gen, run_inline), request)

    assert [type(e) for e in events] == [Context, TextDelta, TextDelta, AnswerEnd]  # empty texts are not sent
    assert [(p.number, p.doc_id) for p in events[0].passages] == [(1, "b"), (2, "a")]
    assert "".join(e.text for e in events[1:-1]) == "Eta theta"
    assert coll.searches == [("What follows eta?", 2, {"lang": "en"})]
    ((prompt_ids, params),) = gen.prompts
    assert params is request.params and "[1] (b.txt) Eta theta iota." in tok.decode(prompt_ids)
    end = events[-1]
    assert (end.finish_reason, end.prompt_tokens, end.completion_tokens) == ("length", len(prompt_ids), 3)
    assert 0 <= end.retrieval_ms <= end.time_to_first_token_ms <= end.total_ms
    assert (end.grounding, end.declined) == ("free", False)


def test_the_end_says_when_the_answer_is_the_no_answer_sentence(tok, coll):
    from rag.prompt import NO_ANSWER

    head, tail = NO_ANSWER[:8], NO_ANSWER[8:]  # streamed in pieces, as a generator does
    gen = FakeGenerator(tok, texts=(head, tail, ""), finish_reason="stop")
    *_, end = answer(RagPipeline(FakeCollections(coll), gen, run_inline), AnswerRequest.ask("kb", "q"))
    assert (end.grounding, end.declined) == ("free", True)


def test_a_chat_retrieves_with_the_previous_user_turn(tok, coll):
    msgs = [
        {"role": "user", "content": "Tell me about eta."},
        {"role": "assistant", "content": "A letter."},
        {"role": "user", "content": "What follows it?"},
    ]
    answer(RagPipeline(FakeCollections(coll), FakeGenerator(tok), run_inline), AnswerRequest("kb", msgs))
    assert coll.searches[0][0] == "Tell me about eta.\nWhat follows it?"


def test_retrieval_uses_the_collections_default_mode_unless_the_request_names_one(tok, coll):
    pipeline = RagPipeline(FakeCollections(coll), FakeGenerator(tok), run_inline)
    answer(pipeline, AnswerRequest.ask("kb", "q"))
    answer(pipeline, AnswerRequest.ask("kb", "q", mode="lexical", fusion={"alpha": 0.3}))
    assert coll.modes == [(None, {}), ("lexical", {"alpha": 0.3})]  # None: Collection.search takes its default


def test_an_answer_without_text_ends_at_its_first_token(tok, coll):
    gen = FakeGenerator(tok, texts=("",), finish_reason="stop")
    *_, end = answer(RagPipeline(FakeCollections(coll), gen, run_inline), AnswerRequest.ask("kb", "q"))
    assert end.finish_reason == "stop" and end.time_to_first_token_ms == end.total_ms


def test_off_topic_needs_a_cut_and_a_measured_distance_below_it():
    from rag.pipeline import off_topic

    assert off_topic(0.2, 0.3) and not off_topic(0.3, 0.3) and not off_topic(0.9, 0.3)
    assert not off_topic(0.2, None)  # no cut set
    assert not off_topic(None, 0.3)  # a lexical search measured no distance: it cannot say
    assert off_topic(-4.0, -1.5)  # an l2 collection's scores: negated squared distances


@pytest.mark.parametrize("grounding", ["free", "quote"])
def test_a_question_far_from_every_chunk_is_declined_without_generating(tok, grounding):
    from rag.prompt import NO_ANSWER

    hits = [hit("b", 2, 0.9, 38, 53), hit("a", 1, 0.2, 0, 17)]
    far = FakeCollection(hits, min_similarity=0.4, nearest_score=0.25)
    gen = FakeGenerator(tok)
    events = answer(
        RagPipeline(FakeCollections(far), gen, run_inline), AnswerRequest.ask("kb", "q", grounding=grounding)
    )
    assert [type(e) for e in events] == [Context, TextDelta, AnswerEnd]
    assert [p.doc_id for p in events[0].passages] == ["b", "a"]  # what was found, so a caller sees how far it was
    assert events[1].text == NO_ANSWER and gen.prompts == []  # nothing generated
    end = events[-1]
    assert (end.grounding, end.declined, end.prompt_tokens, end.completion_tokens) == (grounding, True, 0, 0)
    near = FakeCollection(hits, min_similarity=0.4, nearest_score=0.45)  # at or above the cut: answered as before
    events = answer(
        RagPipeline(FakeCollections(near), gen, run_inline), AnswerRequest.ask("kb", "q", grounding=grounding)
    )
    assert len(gen.prompts) == 1 and not events[-1].declined


def test_without_a_generator_answers_are_a_failed_precondition(coll):
    with pytest.raises(GeneratorUnavailableError, match="--no-generator") as e:
        answer(RagPipeline(FakeCollections(coll), None, run_inline), AnswerRequest.ask("kb", "q"))
    assert isinstance(e.value, FailedPreconditionError)


def test_errors_of_the_domain_reach_the_caller_before_any_event(tok, coll):
    pipeline = RagPipeline(FakeCollections(coll), FakeGenerator(tok, window=64), run_inline)
    with pytest.raises(NotFoundError):
        answer(pipeline, AnswerRequest.ask("nope", "q"))
    with pytest.raises(InvalidArgumentError, match="window of 64"):  # the window is checked once: build_prompt
        answer(pipeline, AnswerRequest.ask("kb", "q", sampling={"max_tokens": 64}))


def test_blocking_work_goes_through_run(tok, coll):
    ran = []

    async def run(fn, *args, **kwargs):
        ran.append(getattr(fn, "__name__", fn))
        return fn(*args, **kwargs)

    answer(RagPipeline(FakeCollections(coll), FakeGenerator(tok), run), AnswerRequest.ask("kb", "q"))
    assert ran == ["get", "search", "build_prompt"]


def test_the_models_default_sampling_applies_when_the_caller_sets_none(tok, coll):
    """generation_config.json's sampling replaces the greedy default; any sampling field the caller sets keeps
    pqrag's defaults for the rest; the answer length is the request's."""
    gc = GenerationConfig.from_dict({"do_sample": True, "temperature": 0.6, "top_p": 0.9, "max_new_tokens": 2048})
    gen = FakeGenerator(tok, generation_config=gc)
    pipeline = RagPipeline(FakeCollections(coll), gen, run_inline)
    answer(pipeline, AnswerRequest.ask("kb", "q"))
    answer(pipeline, AnswerRequest.ask("kb", "q", sampling={"max_tokens": 9}))
    answer(pipeline, AnswerRequest.ask("kb", "q", sampling={"top_k": 5}))
    (_, model), (_, sized), (_, own) = gen.prompts
    assert (model.temperature, model.top_p, model.max_tokens) == (0.6, 0.9, 256)
    assert (sized.temperature, sized.top_p, sized.max_tokens) == (0.6, 0.9, 9)
    assert (own.temperature, own.top_p, own.top_k) == (0.0, 1.0, 5)


@pytest.mark.parametrize(
    "request_g, collection_g, server_g, model_g, expected",
    [
        (None, None, None, None, "free"),  # a checkpoint a user brings
        (None, None, None, "quote", "quote"),  # the bundled model's generation_config.json
        (None, None, "free", "quote", "free"),  # pqrag serve --grounding free
        (None, "quote", "free", None, "quote"),  # the collection's default
        ("free", "quote", "quote", "quote", "free"),  # the request's own
    ],
)
def test_grounding_request_then_collection_then_server_then_model(
    tok, request_g, collection_g, server_g, model_g, expected
):
    coll = FakeCollection([hit("b", 2, 0.9, 38, 53), hit("a", 1, 0.2, 0, 17)], grounding=collection_g)
    gen = FakeGenerator(tok, texts=(" Eta", " theta", ""), generation_config=GenerationConfig(grounding=model_g))
    request = AnswerRequest.ask("kb", "What follows eta?", grounding=request_g)
    events = answer(RagPipeline(FakeCollections(coll), gen, run_inline, server_g), request)
    constraint = gen.prompts[0][1].constraint
    assert (constraint is not None) == (expected == "quote")
    if constraint is not None:  # built over exactly the numbered passages of the context
        assert constraint.numbers == [p.number for p in events[0].passages]
        assert events[1].text == "Eta"  # the first quote's leading space is not sent
    else:
        assert events[1].text == " Eta"


# ---- extract answers (the extractive reader) -----------------------------------------------------------------
BOWL = (
    "Super Bowl 50 was an American football game. The Denver Broncos defeated the Carolina Panthers 24-10 to earn\n"
    "their third Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium in Santa Clara."
)


@pytest.fixture
def bowl():
    return FakeCollection([hit("a", 1, 0.9, 0, 45, text=BOWL), hit("a", 2, 0.5, 45, len(BOWL), text=BOWL)])


def test_extract_answers_quote_the_readers_span_and_cite_it(reader, bowl):
    from rag.reader import collapse

    pipeline = RagPipeline(FakeCollections(bowl), None, run_inline, reader=reader)  # no generator needed
    events = answer(pipeline, AnswerRequest.ask("kb", "Who did the Denver Broncos defeat?", grounding="extract"))
    assert [type(e) for e in events] == [Context, TextDelta, AnswerEnd]
    passages = events[0].passages
    assert [p.number for p in passages] == [1] and passages[0].text == BOWL  # touching hits merge into one
    text = events[1].text
    assert text.endswith(" [1]") and "Carolina Panthers" in text
    assert text.removesuffix(" [1]") in collapse(BOWL)
    end = events[-1]
    assert (end.finish_reason, end.prompt_tokens, end.completion_tokens) == ("stop", 0, 0)
    assert 0 <= end.retrieval_ms <= end.time_to_first_token_ms <= end.total_ms


def test_extract_declines_when_no_span_clears_the_threshold(reader, bowl):
    from rag.prompt import NO_ANSWER
    from rag.reader import Reader, ReaderConfig

    strict = Reader(ReaderConfig(**{**reader.cfg.__dict__, "null_threshold": 1e9}), reader.model, reader.tokenizer)
    pipeline = RagPipeline(FakeCollections(bowl), None, run_inline, reader=strict)
    events = answer(pipeline, AnswerRequest.ask("kb", "Who won?", grounding="extract"))
    assert events[1].text == NO_ANSWER
    assert (events[-1].grounding, events[-1].declined) == ("extract", True)


def test_extract_follows_the_collections_reader_threshold(reader, bowl):
    from rag.prompt import NO_ANSWER

    question = "Who did the Denver Broncos defeat?"
    margin = max(m for m, _ in reader.scores(question, [BOWL]))
    strict = FakeCollection(bowl.hits, reader_threshold=margin + 0.01)  # just above what the reader scores
    events = answer(
        RagPipeline(FakeCollections(strict), None, run_inline, reader=reader),
        AnswerRequest.ask("kb", question, grounding="extract"),
    )
    assert events[1].text == NO_ANSWER
    lenient = FakeCollection(bowl.hits, reader_threshold=margin - 0.01)
    events = answer(
        RagPipeline(FakeCollections(lenient), None, run_inline, reader=reader),
        AnswerRequest.ask("kb", question, grounding="extract"),
    )
    assert "Carolina Panthers" in events[1].text
    far = FakeCollection(bowl.hits, reader_threshold=-100.0, min_similarity=0.9, nearest_score=0.3)  # the cut first
    events = answer(
        RagPipeline(FakeCollections(far), None, run_inline, reader=reader),
        AnswerRequest.ask("kb", question, grounding="extract"),
    )
    assert events[1].text == NO_ANSWER and (events[-1].grounding, events[-1].declined) == ("extract", True)


def test_extract_without_a_reader_and_generation_without_a_generator_are_failed_preconditions(tok, reader, bowl):
    from rag.pipeline import ReaderUnavailableError

    with pytest.raises(ReaderUnavailableError, match="--reader") as e:
        answer(
            RagPipeline(FakeCollections(bowl), FakeGenerator(tok), run_inline),
            AnswerRequest.ask("kb", "q", grounding="extract"),
        )
    assert isinstance(e.value, FailedPreconditionError)
    with pytest.raises(GeneratorUnavailableError, match="grounding 'quote' needs a generator"):
        answer(
            RagPipeline(FakeCollections(bowl), None, run_inline, reader=reader),
            AnswerRequest.ask("kb", "q", grounding="quote"),
        )


@pytest.mark.parametrize("has_reader, expected", [(True, "extract"), (False, "quote")])
def test_a_models_extract_default_falls_back_to_quote_without_a_reader(tok, reader, bowl, has_reader, expected):
    gen = FakeGenerator(tok, texts=(" Super", ""), generation_config=GenerationConfig(grounding="extract"))
    pipeline = RagPipeline(FakeCollections(bowl), gen, run_inline, reader=reader if has_reader else None)
    events = answer(pipeline, AnswerRequest.ask("kb", "Who won?"))
    if expected == "extract":
        assert gen.prompts == [] and events[1].text.endswith("]")
    else:
        assert gen.prompts[0][1].constraint is not None


def test_without_a_generator_the_reader_answers_requests_that_name_no_grounding(reader, bowl):
    pipeline = RagPipeline(FakeCollections(bowl), None, run_inline, reader=reader)
    unset = answer(pipeline, AnswerRequest.ask("kb", "Where was the game played?"))
    named = answer(pipeline, AnswerRequest.ask("kb", "Where was the game played?", grounding="extract"))
    assert [type(e) for e in unset] == [Context, TextDelta, AnswerEnd] and unset[1] == named[1]
