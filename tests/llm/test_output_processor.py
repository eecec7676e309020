"""Output processing: stop strings (cut, never retracting streamed text), stop token ids, eos, min_tokens, the
length limits, logprobs, and the streaming deltas' hold-back; through the engine on the tiny model (conftest.py)
and on hand-made sequences."""

from __future__ import annotations

import pytest

from llm import SamplingParams
from llm.engine import LLMEngine
from llm.engine_config import EngineConfig
from llm.output_processor import OutputProcessor
from llm.request import RequestGroup, Sequence, SequenceStatus
from tests.llm.helpers import PROMPTS, make_llm


def test_stop_strings_truncate(model, tok):
    llm = make_llm(model, tok)
    base = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0]
    text = base.text
    stop = text[6:9]
    assert len(stop) == 3
    out = llm.generate(
        PROMPTS[0], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop=[stop, "\x00\x01"])
    )[0]
    assert out.text == text[: text.find(stop)]
    assert out.outputs[0].finish_reason == "stop" and out.outputs[0].stop_reason == stop
    assert base.token_ids[: len(out.token_ids)] == out.token_ids


def test_stop_token_ids_and_min_tokens(model, tok, naive):
    prompt = tok.encode(PROMPTS[0])
    ref = naive(prompt, 12)
    llm = make_llm(model, tok)
    first = ref[0]
    stopped = llm.generate([prompt], SamplingParams(temperature=0, stop_token_ids=[first], max_tokens=12))[0]
    assert stopped.token_ids == [first] and stopped.outputs[0].finish_reason == "stop"
    assert stopped.outputs[0].stop_reason == first
    held = llm.generate([prompt], SamplingParams(temperature=0, stop_token_ids=[first], min_tokens=5, max_tokens=12))[0]
    assert len(held.token_ids) >= 5 and first not in held.token_ids[:5]


def test_eos_stops_and_ignore_eos(model, tok, naive):
    prompt = tok.encode(PROMPTS[1])
    ref = naive(prompt, 12)
    engine = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=64))
    engine.output_processor.eos_ids = [ref[3]]  # make the 4th greedy token the eos of this engine
    engine.add_request("a", prompt, SamplingParams(temperature=0, max_tokens=12))
    engine.add_request("b", prompt, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    done = {}
    while engine.has_unfinished_requests():
        for o in engine.step().finished:
            done[o.request_id] = o
    assert done["a"].token_ids == ref[: ref.index(ref[3]) + 1] and done["a"].outputs[0].finish_reason == "stop"
    assert done["b"].token_ids == ref


def test_logprobs(model, tok):
    llm = make_llm(model, tok)
    out = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=4, logprobs=3, ignore_eos=True))[0]
    lps = out.outputs[0].logprobs
    assert len(lps) == 4
    for t, d in zip(out.token_ids, lps):
        assert t in d and len(d) == 3  # greedy: the sampled token is the top-1
        assert max(d.values()) == d[t] <= 0.0


def make_seq(tok, params: SamplingParams, prompt: str = "Product", max_tokens: int = 50) -> Sequence:
    group = RequestGroup("r", tok.encode(prompt), params, max_tokens=max_tokens)
    seq = Sequence(group, 0, params, tok, (1, 0))
    seq.status = SequenceStatus.RUNNING
    group.seqs.append(seq)
    return seq


def feed(proc: OutputProcessor, seq: Sequence, ids: list[int]) -> str | None:
    """Append ids one by one as the engine would; the finish reason of the token that ended it, if one did."""
    for t in ids:
        reason = proc.append(seq, t, None, 0.0)
        if reason is not None:
            seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason
            return reason
    return None


def test_stop_string_is_held_back_then_cut(tok):
    ids = tok.encode(" inverted file index visits")
    text = tok.decode(ids)
    stop = "file"
    proc = OutputProcessor([], max_model_len=64)
    seq = make_seq(tok, SamplingParams(stop=[stop, "zzzzzz"]))
    streamed = ""
    for t in ids:
        if feed(proc, seq, [t]) is not None:
            break
        d = proc.delta(seq)
        streamed += d.text_delta
        assert len(seq.text) - len(streamed) <= 5  # at most len("zzzzzz") - 1 characters held back
        assert stop not in streamed
    assert seq.finish_reason == "stop" and seq.stop_reason == stop
    last = proc.delta(seq)
    assert last.finished and streamed + last.text_delta == text[: text.find(stop)]


def test_length_limits_and_banned_ids(tok):
    proc = OutputProcessor([3, 3, 1], max_model_len=64)
    assert proc.eos_ids == [1, 3]
    params = SamplingParams(min_tokens=2, stop_token_ids=[9])
    seq = make_seq(tok, params, max_tokens=3)
    assert proc.stop_ids(params) == [1, 3, 9]
    assert proc.banned_ids([seq]) == [[1, 3, 9]]  # below min_tokens: no eos, no stop token yet
    assert proc.stop_ids(SamplingParams(ignore_eos=True)) == []
    assert feed(proc, seq, [40, 41]) is None
    assert proc.banned_ids([seq]) is None
    assert feed(proc, seq, [42]) == "length"  # max_tokens
    window = make_seq(tok, SamplingParams(ignore_eos=True), max_tokens=1000)  # the window ends it first
    room = 64 - window.num_tokens
    assert feed(proc, window, [40] * (room - 1)) is None and feed(proc, window, [40]) == "length"


@pytest.mark.parametrize("stop_token", [True, False])
def test_eos_or_stop_token_ends_without_text(tok, stop_token):
    eos = tok.encode("a")[0]
    proc = OutputProcessor([] if stop_token else [eos], max_model_len=64)
    seq = make_seq(tok, SamplingParams(stop_token_ids=[eos] if stop_token else None))
    assert feed(proc, seq, tok.encode("the") + [eos]) == "stop"
    assert seq.text == "the" and seq.stop_reason == (eos if stop_token else None)
