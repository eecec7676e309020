"""AsyncLLM: streaming deltas that concatenate to the final text (n > 1 interleaved), stop strings in a stream,
errors before the first delta, cancellation that aborts and frees blocks, the bounded queue, and loading options.
Fixtures (tok, model, naive) are in conftest.py."""

from __future__ import annotations

import asyncio

import pytest

from common.errors import InvalidArgumentError
from llm import SamplingParams
from llm.async_engine import AsyncLLM
from llm.engine import LLMEngine
from llm.engine_config import EngineConfig
from llm.scheduler import QueueFullError
from tests.llm.helpers import GREEDY, PROMPTS, make_llm


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


def test_from_dir_takes_engine_options(tmp_path, model, tok):
    from llm.checkpoint import save_model

    save_model(model, tmp_path)
    tok.save(tmp_path)
    allm = AsyncLLM.from_dir(tmp_path, device="cpu", max_num_seqs=3, kv_cache_memory=1 << 20, max_model_len=32)
    engine = allm.engine
    assert engine.scheduler.config.max_num_seqs == 3 and allm.max_model_len == 32
    assert engine.config.kv_cache_memory == 1 << 20 and engine.kv.pool.num_blocks > 0
    assert allm.tokenizer is not None and allm.config.max_position_embeddings == 64
    with pytest.raises(InvalidArgumentError, match="max_num_seq"):
        AsyncLLM.from_dir(tmp_path, device="cpu", max_num_seq=3)  # misspelt


def test_async_errors_before_the_first_delta(model, tok):
    allm = AsyncLLM(LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=64)))

    async def main():
        with pytest.raises(InvalidArgumentError, match="empty"):
            async for _ in allm.generate([], GREEDY, "empty"):
                pass
        gen = allm.generate(tok.encode(PROMPTS[0]), GREEDY, "dup")
        first = await gen.__anext__()
        with pytest.raises(InvalidArgumentError, match="already in use"):
            async for _ in allm.generate(tok.encode(PROMPTS[0]), GREEDY, "dup"):
                pass
        rest = [d async for d in gen]
        return [first] + rest

    try:
        deltas = asyncio.run(main())
    finally:
        allm.shutdown()
    assert deltas[-1].finished and sum(len(d.token_ids) for d in deltas) == GREEDY.max_tokens


def test_engine_thread_death_ends_open_streams_and_refuses_new_ones(model, tok):
    """A fault outside one request's step (here: the stats read after a step) kills the engine thread: the open
    stream ends with EngineDeadError (UNAVAILABLE at the server), new requests get it at once, and on_death hears."""
    from common.errors import UnavailableError
    from llm.async_engine import EngineDeadError

    engine = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=64))
    allm = AsyncLLM(engine)
    deaths: list[BaseException] = []
    allm.on_death = deaths.append
    long = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    prompt = tok.encode(PROMPTS[0])

    async def main():
        got = 0
        with pytest.raises(EngineDeadError) as info:
            async for _ in allm.generate(prompt, long, "open"):
                got += 1
                if got == 2:

                    def broken():
                        raise OSError("injected fault")

                    engine.stats = broken
        assert isinstance(info.value, UnavailableError) and "OSError" in str(info.value)
        with pytest.raises(EngineDeadError):
            async for _ in allm.generate(prompt, long, "late"):
                pass

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        allm.shutdown()
    assert not allm.running and isinstance(allm.dead, OSError) and len(deaths) == 1


def test_failed_steps_in_a_row_mean_the_engine_is_dead(model, tok):
    from llm.async_engine import MAX_FAILED_STEPS, EngineDeadError

    engine = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=64))
    allm = AsyncLLM(engine)
    calls = []

    def failing_step():
        calls.append(1)
        raise RuntimeError("injected step failure")

    engine.step = failing_step
    prompt = tok.encode(PROMPTS[0])

    async def one(rid):
        async for _ in allm.generate(prompt, SamplingParams(temperature=0, max_tokens=4), rid):
            pass

    async def main():
        for i in range(MAX_FAILED_STEPS - 1):
            with pytest.raises(RuntimeError, match="engine step failed"):  # one batch's failure: its requests fail
                await one(f"r{i}")
        assert allm.dead is None and allm.running
        with pytest.raises((RuntimeError, EngineDeadError)):
            await one("last")
        for _ in range(100):
            if allm.dead is not None:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(EngineDeadError):
            await one("after")

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        allm.shutdown()
    assert len(calls) == MAX_FAILED_STEPS and allm.dead is not None
