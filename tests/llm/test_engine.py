"""The engine end to end on a tiny random model: greedy output equals a naive full-forward greedy loop token for
token under batching, chunked prefill, prefix-cache hits and preemption; abort frees blocks; seeds, n > 1 forks,
stop strings, min_tokens, the bounded queue, context limits; and AsyncLLM streaming with cancellation."""

from __future__ import annotations

import asyncio
import functools

import pytest
import torch

from llm import LLM, SamplingParams
from llm.async_engine import AsyncLLM
from llm.config import get_config
from llm.engine import EngineConfig, LLMEngine
from llm.model import CausalLM
from llm.scheduler import QueueFullError
from llm.tokenizer import train_bpe_tokenizer

SENTENCES = [
    "Product quantization splits a vector into m sub-vectors and encodes each with its own codebook.",
    "The inverted file index visits only nprobe of the nlist clusters at query time.",
    "Retrieval-augmented generation grounds the answer in the retrieved passages.",
    "Mixture-of-experts layers route every token to the top two of eight experts.",
]
PROMPTS = [  # different lengths; the last two share a long prefix (prefix-cache hits with block_size 4)
    "Product quantization",
    "The inverted file index visits only nprobe",
    "Retrieval-augmented generation grounds the answer in the retrieved passages. Mixture",
    "Retrieval-augmented generation grounds the answer in the retrieved passages. The",
]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(SENTENCES * 10, vocab_size=400)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    m = CausalLM(get_config("tiny", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, max_position_embeddings=64))
    with torch.no_grad():  # O(1) logits: with the 0.02 init every logit is ~0 and greedy ties are likely
        for p in m.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p.shape[-1] ** -0.5)
    return m.eval()


@pytest.fixture(scope="module")
def naive(model):
    @functools.cache
    def greedy(prompt: tuple[int, ...], n: int) -> list[int]:
        ids, out = list(prompt), []
        with torch.no_grad():
            for _ in range(n):
                t = int(model(torch.tensor([ids]))[0, -1].argmax())
                ids.append(t)
                out.append(t)
        return out

    return lambda prompt, n=GREEDY.max_tokens: greedy(tuple(prompt), n)


def make_llm(model, tok, **kw) -> LLM:
    kw.setdefault("block_size", 4)
    kw.setdefault("num_blocks", 128)
    return LLM.from_model(model, tok, **kw)


def assert_matches_naive(outs, naive):
    for o in outs:
        assert o.token_ids == naive(o.prompt_token_ids), o.prompt
        assert o.outputs[0].finish_reason == "length"


@pytest.mark.parametrize(
    "kw",
    [
        dict(),  # everything in one step
        dict(max_num_batched_tokens=7),  # chunked prefill: prompts span several steps, beside decodes
        dict(max_num_seqs=2, enable_prefix_caching=False),  # continuous batching: requests join as others leave
    ],
)
def test_greedy_equals_naive_loop(model, tok, naive, kw):
    llm = make_llm(model, tok, **kw)
    outs = llm.generate(PROMPTS, GREEDY)
    assert [o.prompt for o in outs] == PROMPTS
    assert_matches_naive(outs, naive)
    assert outs[0].text == tok.decode(outs[0].token_ids)
    assert llm.engine.num_free_blocks == 128
    m = outs[1].metrics
    assert m.ttft is not None and m.e2e_latency >= m.ttft >= m.queue_time >= 0 and m.mean_itl > 0


def test_prefix_cache_hits_keep_greedy_output(model, tok, naive):
    llm = make_llm(model, tok)
    first = llm.generate(PROMPTS, GREEDY)
    again = llm.generate(PROMPTS[::-1], GREEDY)  # all prompts now hit cached blocks
    stats = llm.engine.stats()
    assert stats["prefix_cache_hit_rate"] > 0.4 and stats["prefix_cache_hit_tokens"] > 0
    assert again[0].metrics.num_cached_tokens > 0
    assert_matches_naive(first + again, naive)


def test_preemption_recomputes_identically(model, tok, naive):
    # 14 blocks of 4 tokens cannot hold the four sequences (~ 6-26 prompt tokens + 12 new each) at once.
    llm = make_llm(model, tok, num_blocks=14)
    outs = llm.generate(PROMPTS, GREEDY)
    assert llm.engine.stats()["num_preemptions"] > 0
    assert sum(o.metrics.num_preemptions for o in outs) > 0
    assert_matches_naive(outs, naive)
    assert llm.engine.num_free_blocks == 14


def test_abort_frees_blocks(model, tok):
    engine = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=64, max_num_batched_tokens=8))
    for i, p in enumerate(PROMPTS):
        engine.add_request(f"r{i}", tok.encode(p), GREEDY)
    engine.step()
    engine.step()
    assert engine.num_free_blocks < 64
    out = engine.abort_request("r2")
    assert out is not None and out.outputs[0].finish_reason == "abort"
    for i in (0, 1, 3):
        engine.abort_request(f"r{i}")
    assert engine.num_free_blocks == 64 and not engine.has_unfinished_requests()
    assert engine.abort_request("r0") is None  # unknown / already done
    assert engine.stats()["num_aborted_requests"] == 4


def test_seeded_sampling_is_batch_independent(model, tok):
    p = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=10, seed=1234, ignore_eos=True)
    llm = make_llm(model, tok)
    alone = llm.generate(PROMPTS[1], p)[0]
    others = SamplingParams(temperature=0.7, max_tokens=10, ignore_eos=True)
    batched = llm.generate(PROMPTS, [others, p, others, SamplingParams(temperature=0, max_tokens=3)])[1]
    assert alone.token_ids == batched.token_ids and alone.text == batched.text
    different = llm.generate(PROMPTS[1], SamplingParams(temperature=1.0, max_tokens=10, seed=99, ignore_eos=True))
    assert different[0].token_ids != alone.token_ids


def test_n_samples_fork_and_share_blocks(model, tok, naive):
    prompt = PROMPTS[2]  # 20-odd tokens: a partial last block, shared and then copied on write
    llm = make_llm(model, tok)
    out = llm.generate(prompt, SamplingParams(n=3, temperature=0, max_tokens=12, ignore_eos=True))[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    for c in out.outputs:  # copy-on-write kept every sample's KV intact
        assert c.token_ids == naive(out.prompt_token_ids)
    seeded = llm.generate(prompt, SamplingParams(n=2, temperature=1.0, seed=3, max_tokens=12, ignore_eos=True))[0]
    assert seeded.outputs[0].token_ids != seeded.outputs[1].token_ids
    # the children share the prompt's blocks: peak usage is far below 2 private copies
    engine = llm.engine
    engine.add_request("fork", out.prompt_token_ids, SamplingParams(n=2, temperature=0, max_tokens=4))
    engine.step()
    prompt_blocks = -(-len(out.prompt_token_ids) // 4)
    used = engine.stats()["num_blocks"] - engine.num_free_blocks
    assert used < 2 * prompt_blocks
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.num_free_blocks == engine.stats()["num_blocks"]


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
    engine.eos_ids = [ref[3]]  # make the 4th greedy token the eos of this engine
    engine.add_request("a", prompt, SamplingParams(temperature=0, max_tokens=12))
    engine.add_request("b", prompt, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    done = {}
    while engine.has_unfinished_requests():
        for o in engine.step().finished:
            done[o.request_id] = o
    assert done["a"].token_ids == ref[: ref.index(ref[3]) + 1] and done["a"].outputs[0].finish_reason == "stop"
    assert done["b"].token_ids == ref


def test_queue_full_and_context_limits(model, tok):
    engine = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=64, max_waiting=2))
    engine.add_request("a", [5, 6, 7], GREEDY)
    engine.add_request("b", [5, 6, 7], GREEDY)
    with pytest.raises(QueueFullError):
        engine.add_request("c", [5, 6, 7], GREEDY)
    with pytest.raises(ValueError, match="context"):
        engine.add_request("d", list(range(5, 69)), GREEDY)  # 64 tokens: no room for one more
    with pytest.raises(ValueError, match="max_tokens"):
        engine.add_request("e", list(range(5, 60)), SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("f", [], GREEDY)
    # max_tokens=None fills the context
    engine2 = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=64))
    engine2.add_request("g", list(range(5, 55)), SamplingParams(max_tokens=None, temperature=0, ignore_eos=True))
    while engine2.has_unfinished_requests():
        for o in engine2.step().finished:
            assert len(o.token_ids) == 14 and o.outputs[0].finish_reason == "length"


def test_logprobs(model, tok):
    llm = make_llm(model, tok)
    out = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=4, logprobs=3, ignore_eos=True))[0]
    lps = out.outputs[0].logprobs
    assert len(lps) == 4
    for t, d in zip(out.token_ids, lps):
        assert t in d and len(d) == 3  # greedy: the sampled token is the top-1
        assert max(d.values()) == d[t] <= 0.0


# ---- AsyncLLM --------------------------------------------------------------------------------------------------------
def test_async_stream_concatenates_to_final_text(model, tok, naive):
    engine = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=64, max_num_batched_tokens=8))
    allm = AsyncLLM(engine)
    prompts = [tok.encode(p) for p in PROMPTS]

    async def consume(i):
        deltas = [d async for d in allm.generate(prompts[i], GREEDY, request_id=f"s{i}")]
        return deltas

    async def main():
        n2 = [d async for d in allm.generate(prompts[0], SamplingParams(n=2, temperature=0, max_tokens=5), "n2")]
        return n2, await asyncio.gather(*(consume(i) for i in range(len(prompts))))

    try:
        n2, results = asyncio.run(main())
    finally:
        allm.shutdown()
    for i, deltas in enumerate(results):
        assert deltas[-1].finished and deltas[-1].finish_reason == "length"
        assert all(not d.finished for d in deltas[:-1])
        ids = [t for d in deltas for t in d.token_ids]
        assert ids == naive(prompts[i])
        assert "".join(d.text_delta for d in deltas) == tok.decode(ids)
        assert deltas[-1].ttft_s is not None and deltas[-1].num_generated_tokens == 12
        assert deltas[-1].num_prompt_tokens == len(prompts[i])
    for index in (0, 1):  # n = 2: both samples stream, interleaved, each ends with one finished delta
        mine = [d for d in n2 if d.index == index]
        assert [t for d in mine for t in d.token_ids] == naive(prompts[0])[:5]
        assert [d.finished for d in mine] == [False] * (len(mine) - 1) + [True]
    m = allm.metrics()
    assert m["num_running"] == 0 and m["num_finished_requests"] == 5 and allm.config.max_position_embeddings == 64


def test_async_stop_string_stream_and_errors(model, tok):
    llm = make_llm(model, tok)
    text = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0].text
    stop = text[5:8]
    engine = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=64, max_waiting=1))
    allm = AsyncLLM(engine)
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop=stop)

    async def main():
        deltas = [d async for d in allm.generate(tok.encode(PROMPTS[0]), params, "x")]
        with pytest.raises(ValueError, match="context"):
            async for _ in allm.generate(list(range(5, 69)), GREEDY, "too-long"):
                pass
        return deltas

    try:
        deltas = asyncio.run(main())
    finally:
        allm.shutdown()
    assert "".join(d.text_delta for d in deltas) == text[: text.find(stop)]
    assert deltas[-1].finish_reason == "stop"


def test_async_cancel_aborts_and_frees_blocks_and_queue_full(model, tok):
    engine = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=64, max_waiting=1, max_num_seqs=1))
    allm = AsyncLLM(engine)
    long = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    prompt = tok.encode(PROMPTS[0])

    async def main():
        got_one = asyncio.Event()

        async def consume(rid):
            async for _ in allm.generate(prompt, long, rid):
                got_one.set()

        task = asyncio.create_task(consume("victim"))
        await asyncio.wait_for(got_one.wait(), 30)
        assert engine.num_free_blocks < 64
        # victim runs (max_num_seqs=1); one more waits; a third is refused while the queue is full
        waiter = asyncio.create_task(consume("waiter"))
        for _ in range(500):
            if engine.scheduler.num_waiting == 1:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            async for _ in allm.generate(prompt, long, "refused"):
                pass
        waiter.cancel()
        task.cancel()
        for t in (task, waiter):
            with pytest.raises(asyncio.CancelledError):
                await t
        for _ in range(500):  # the engine thread applies the aborts within a step
            if engine.num_free_blocks == 64 and not engine.has_unfinished_requests():
                break
            await asyncio.sleep(0.01)

    try:
        asyncio.run(main())
    finally:
        allm.shutdown()
    assert engine.num_free_blocks == 64 and not engine.has_unfinished_requests()
    assert engine.stats()["num_aborted_requests"] == 2
