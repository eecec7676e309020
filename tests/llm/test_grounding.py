"""Grounded (quote) decoding: every answer the constraint lets through is verbatim passage spans, each followed by
the marker of a passage it is in, across tokenizer families (property-based); the allowed set is never empty; the
state is a function of the output; and in the engine, constrained and free rows share batches, free greedy output
is unchanged, and preemption keeps the state."""

from __future__ import annotations

import functools
import random
import re
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm.grounding import QuoteIndex, quotable
from llm.sampler import Sampler, SamplingParams, make_batch
from llm.tokenizer import Tokenizer
from tests.llm import tiny_tokenizers
from tests.llm.helpers import SENTENCES, make_llm

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "pqrag-small"
REFUSAL = "The passages do not say."
MARKER = re.compile(r" \[(\d+)\]")
EOS = -1  # the walk's "end here"


@functools.cache
def tokenizer(kind: str) -> Tokenizer:
    if kind == "bundled":
        return Tokenizer.from_file(BUNDLED)
    root = Path(tempfile.mkdtemp(prefix="pqrag-grounding-"))
    if kind == "byte-level":
        return Tokenizer.from_file(tiny_tokenizers.chatml(root / "chatml"))
    return Tokenizer.from_file(tiny_tokenizers.mixtral_instruct(root / "mixtral", legacy=kind == "metaspace-legacy"))


KINDS = ["bundled", "byte-level", "metaspace-legacy", "metaspace"]

WORDS = st.sampled_from(
    "the a vector passage is splits into codebook Python list café naïve 東京 yield x2 don't e.g. 3.14 (see) "
    "generator-based".split()
)
SENTENCE = st.builds(
    lambda words, comma, end: (
        " ".join(words[:comma] + ([words[comma] + ","] if comma < len(words) else [])).rstrip(",").strip() + end
    ),
    st.lists(WORDS, min_size=1, max_size=8),
    st.integers(0, 8),
    st.sampled_from([".", "!", "?", ";", ":", "", "\n", "  ", "\n\n", ".\n\n", ".\n \n"]),
)
PASSAGE = st.lists(SENTENCE, min_size=1, max_size=4).map(lambda s: " ".join(s).strip()).filter(bool)


def check_quoted(text: str, passages: dict[int, str], finished: bool) -> None:
    """text is verbatim spans of the passages (as shown after a space), each followed by the marker of one that
    holds it; a finished answer ends with a marker after a sentence end. Or exactly the refusal."""
    if text.strip() == REFUSAL or (not finished and text and REFUSAL.startswith(text)):
        return
    pieces = MARKER.split(text)  # span, number, span, number, ..., tail
    for span, number in zip(pieces[0::2], pieces[1::2]):
        assert span, f"a marker without a quote: {text!r}"
        assert int(number) in passages, text
        assert span in " " + passages[int(number)], f"{span!r} is not in passage [{number}]"
    tail = pieces[-1]
    if finished:
        assert tail == "", f"the answer ended inside a quote: {text!r}"
        if len(pieces) > 1:
            assert ends_sentence(pieces[-3], " " + passages[int(pieces[-2])]), f"ended mid-sentence: {text!r}"
    else:
        tail = re.sub(r" (\[\d*)?$", "", tail).rstrip("\ufffd")  # cut inside a marker or a character
        assert any(tail in " " + p for p in passages.values()), f"{tail!r} is in no passage"


def ends_sentence(span: str, passage: str) -> bool:
    """Some occurrence of span in passage ends a sentence: . ! ? at its end, or a blank line or the end next."""
    at = passage.find(span)
    while at >= 0:
        rest = passage[at + len(span) :]
        if span.rstrip()[-1:] in ".!?" or not rest.strip() or rest[: len(rest) - len(rest.lstrip())].count("\n") >= 2:
            return True
        at = passage.find(span, at + 1)
    return False


def walk(index: QuoteIndex, rnd: random.Random, steps: int) -> tuple[list[int], bool]:
    """A random model under the constraint: picks any allowed token (or the end) each step."""
    c, out = index.start(), []
    for _ in range(steps):
        ids, can_end = c.allowed()
        assert ids or can_end, "the constraint left no token and no end"
        assert len(set(ids)) == len(ids)
        choice = rnd.choice(ids + ([EOS] if can_end else []))
        if choice == EOS:
            return out, True
        out.append(choice)
        c.advance(choice)
        assert c.num_tokens == len(out)
    return out, False


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(passages=st.lists(PASSAGE, min_size=1, max_size=4), seed=st.integers(0, 2**32 - 1), refusal=st.booleans())
def test_every_answer_is_verbatim_spans_with_their_markers(kind, passages, seed, refusal):
    tok = tokenizer(kind)
    numbered = list(enumerate(passages, start=1))
    index = QuoteIndex(tok, numbered, refusal=REFUSAL if refusal else None)
    rnd = random.Random(seed)
    for _ in range(3):
        out, finished = walk(index, rnd, steps=rnd.choice([5, 40, 200]))
        check_quoted(tok.decode(out), {n: quotable(p) for n, p in numbered}, finished)
        assert index.state_after(out).states == replay(index, out)


def replay(index: QuoteIndex, out: list[int]):
    c = index.start()
    for t in out:
        c.advance(t)
    return c.states


def tail_ids(tok: Tokenizer, text: str) -> list[int]:
    """The tokens of text as it reads after a sentence end (how QuoteIndex tokenizes quotes and markers)."""
    return tok.encode("x." + text)[len(tok.encode("x.")) :]


@pytest.mark.parametrize("kind", KINDS)
def test_known_answer_and_boundaries(kind):
    tok = tokenizer(kind)
    text = "The cat sat on the mat. It ran away, quickly; then it slept."
    index = QuoteIndex(tok, [(1, text), (2, "Tuples are not mutable!")], refusal=REFUSAL)

    def after(answer: str):
        c = index.start()
        for t in tail_ids(tok, answer):
            assert c.accepts(t), f"{tok.decode([t])!r} refused in {answer!r}"
            c.advance(t)
        return c

    # From a sentence start to a sentence end, its marker, another quote, its marker: then it may end.
    assert after(" It ran away, quickly; then it slept. [1] Tuples are not mutable! [2]").can_end
    assert after(" quickly; then it slept. [1]").can_end  # a start after a comma
    marker1, marker2 = tail_ids(tok, " [1]"), tail_ids(tok, " [2]")
    mid = after(" It ran")
    assert not mid.can_end and not mid.accepts(marker1[0])  # no marker mid-clause
    assert not after(" It ran away,").accepts(marker1[0])  # nor after a comma
    clause = after(" It ran away, quickly;")
    assert clause.accepts(marker1[0]) and not clause.accepts(marker2[0]) or marker1[0] == marker2[0]
    assert not after(" It ran away, quickly; [1]").can_end  # a clause end is not a sentence end
    assert not index.start().accepts(tail_ids(tok, " ran")[0])  # no start mid-sentence
    with pytest.raises(ValueError):
        index.start().advance(tok.vocab_size + 1)
    # The answer's first quote may start without its space, as an answer's first word is tokenized; later ones not.
    c = index.start()
    for t in tok.encode("It ran away, quickly; then it slept.") + tail_ids(tok, " [1]"):
        assert c.accepts(t), tok.decode([t])
        c.advance(t)
    assert c.can_end
    bare, spaced = tok.encode("Tuples")[0], tail_ids(tok, " Tuples")[0]
    assert c.accepts(spaced) and (bare == spaced or not c.accepts(bare))


def test_no_passages_only_end_or_refusal():
    tok = tokenizer("bundled")
    assert QuoteIndex(tok, []).start().allowed() == ([], True)
    ids, can_end = QuoteIndex(tok, [], refusal=REFUSAL).start().allowed()
    assert can_end and ids == [tok.encode(REFUSAL)[0]]


def test_sampler_masks_constrained_rows_and_leaves_free_rows():
    V = 10
    logits = torch.randn(3, V)
    params = [SamplingParams(temperature=0)] * 3
    batch = make_batch(params, V, allowed_ids=[[3, 7], None, [0]])
    out = Sampler()(logits, batch).token_ids.tolist()
    assert out[0] == (3 if logits[0, 3] > logits[0, 7] else 7)
    assert out[1] == int(logits[1].argmax()) and out[2] == 0
    assert make_batch(params, V, allowed_ids=[None, None, None]).allowed is None
    # Sampled (not greedy) rows too: the draw never leaves the allowed set.
    sampled = [SamplingParams(temperature=1.0, seed=s) for s in range(3)]
    for _ in range(20):
        ids = Sampler()(torch.randn(3, V), make_batch(sampled, V, allowed_ids=[[1, 2], None, [5, 9]])).token_ids
        assert ids[0] in (1, 2) and ids[2] in (5, 9)


PASSAGES = [(1, SENTENCES[0]), (2, SENTENCES[2] + " " + SENTENCES[3])]


def quoted_params(tok, **fields) -> SamplingParams:
    return SamplingParams(constraint=QuoteIndex(tok, PASSAGES), **fields)


def test_engine_batches_constrained_and_free_rows(model, tok, naive):
    prompts = ["Product quantization", "The inverted file index"]
    free = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    llm = make_llm(model, tok)
    quoted = quoted_params(tok, temperature=0, max_tokens=30)
    mixed = llm.generate(prompts * 2, [free, free, quoted, quoted])
    for o in mixed[:2]:  # free rows: the greedy tokens of a naive forward per token, constrained rows beside them
        assert o.outputs[0].token_ids == naive(o.prompt_token_ids, 12)
    for o in mixed[2:]:
        c = o.outputs[0]
        check_quoted(c.text, dict(PASSAGES), c.finish_reason == "stop")
        assert c.text, "a constrained greedy answer quotes something"


def test_engine_constraint_survives_preemption_and_sampling(model, tok):
    params = [quoted_params(tok, temperature=1.0, seed=s, max_tokens=24) for s in range(4)]
    prompts = ["Product quantization", "The inverted file index visits only nprobe", "Retrieval", "Mixture"]
    llm = make_llm(model, tok, num_blocks=12)  # too few blocks for four sequences at once: preemption
    outs = llm.generate(prompts, params)
    assert llm.engine.stats()["num_preemptions"] > 0
    for o in outs:
        c = o.outputs[0]
        check_quoted(c.text, dict(PASSAGES), c.finish_reason == "stop")
    again = make_llm(model, tok).generate(prompts, params)  # no preemption: the same seeded answers
    assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in outs]


def test_quotable_keeps_paragraphs_and_collapses_wraps():
    assert quotable("  A wrapped\nline,  two spaces.\n\n  Next\tpara.\n \n\nLast.") == (
        "A wrapped line, two spaces.\n\nNext para.\n\nLast."
    )


def test_constraint_under_ngram_speculative_decoding(model, tok):
    """Drafts are checked against each row's state advanced through them: the same greedy quoted answers."""
    prompts = ["Product quantization", "Retrieval-augmented generation grounds"]
    # Prompts that hold the passages: n-gram drafts come from them, as in a RAG prompt.
    ids = [tok.encode(dict(PASSAGES)[1] + " " + p) for p in prompts]  # (a 64-token window)
    params = quoted_params(tok, temperature=0, max_tokens=20)
    plain_llm = make_llm(model, tok, num_blocks=256)
    plain = plain_llm.generate(ids, params)
    spec = make_llm(model, tok, num_blocks=256, speculative_config={"num_speculative_tokens": 4})
    drafted = spec.generate(ids, params)
    assert [o.outputs[0].token_ids for o in drafted] == [o.outputs[0].token_ids for o in plain]
    for o in drafted:
        check_quoted(o.outputs[0].text, dict(PASSAGES), o.outputs[0].finish_reason == "stop")
    s = spec.engine.stats()
    # Inside a quoted clause the constraint forces the next tokens and the drafter proposes exactly those: they are
    # accepted whatever the (random) model prefers, so the answers take fewer steps.
    assert s["spec_num_drafts"] > 0 and s["spec_acceptance_rate"] > 0.5, s
    assert s["num_steps"] < plain_llm.engine.stats()["num_steps"]


def test_forced_tokens_are_drafted_above_the_batch_threshold(model, tok):
    """Past disable_by_batch_size no n-gram guess is drafted, but quoted rows still draft what their constraint
    forces: every such draft token is accepted, and the answers are the same."""
    ids = [tok.encode(dict(PASSAGES)[1] + " " + p) for p in ("Product quantization", "Retrieval", "Mixture")]
    params = quoted_params(tok, temperature=0, max_tokens=20)
    plain = make_llm(model, tok, num_blocks=256).generate(ids, params)
    cfg = {"num_speculative_tokens": 4, "disable_by_batch_size": 1}
    spec = make_llm(model, tok, num_blocks=256, speculative_config=cfg)
    assert [o.outputs[0].token_ids for o in spec.generate(ids, params)] == [o.outputs[0].token_ids for o in plain]
    s = spec.engine.stats()
    # (the last row left running may also guess: at most a few rejected tokens)
    assert s["spec_num_draft_tokens"] > 10 and s["spec_acceptance_rate"] > 0.9, s
    free = make_llm(model, tok, num_blocks=256, speculative_config=cfg)
    free.generate(ids, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    assert free.engine.stats()["spec_num_drafts"] == 0  # three free rows > 1: no drafts at all


def test_drafter_proposes_the_tokens_a_quote_forces(tok):
    from llm.request import Sequence
    from llm.speculative import SpeculativeDecoder
    from llm.speculative_config import SpeculativeConfig

    params = quoted_params(tok, temperature=0, max_tokens=20)
    index = params.constraint
    passage = index.passages[0].tokens
    seq = Sequence.__new__(Sequence)  # only what draft() reads: the tokens so far and the constraint state
    seq.constraint = index.start()
    for t in passage[:4]:  # the answer is quoting passage 1 (" Product quanti...": one place it can be in)
        seq.constraint.advance(t)
    seq._all_token_ids = [7, 8, 9, *passage[:4]]  # a prompt without the passage: no n-gram to find
    spec = SpeculativeDecoder(SpeculativeConfig(num_speculative_tokens=4), max_model_len=64)
    draft = spec.draft(seq, 4)
    assert len(draft) >= 2 and draft == list(passage[4 : 4 + len(draft)])  # the rest of the quote, no guess
    assert spec.draft(seq, 0) == []


def test_engine_refuses_a_constraint_of_another_vocabulary(model, tok):
    from common.errors import InvalidArgumentError

    big = QuoteIndex(tokenizer("bundled"), [(1, "Token ids of a 4096-word vocabulary, quickly.")])
    assert big.max_token_id >= model.config.vocab_size
    with pytest.raises(InvalidArgumentError, match="exceed the vocabulary"):
        make_llm(model, tok).generate(["Product"], SamplingParams(constraint=big, max_tokens=4))
