"""DecodeGraphs: the static-buffer decode forward that CUDA graphs capture gives the eager runner's logits, its
padding rows write nothing, and only pure decode steps within the captured sizes qualify. The capture and replay
themselves need a GPU (bench/gpu_check.sh runs the engine there); the CPU checks what is captured."""

from __future__ import annotations

import pytest
import torch

from llm import SamplingParams
from llm.cuda_graphs import DecodeGraphs
from llm.engine import LLMEngine
from llm.engine_config import EngineConfig
from tests.llm.helpers import PROMPTS


def decoding_engine(model, tok) -> LLMEngine:
    """An engine whose three sequences have prefilled and decode from the next step on."""
    engine = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=64))
    for i, p in enumerate(PROMPTS[:3]):
        engine.add_request(f"r{i}", tok.encode(p), SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    engine.step()
    return engine


@pytest.mark.parametrize("sizes", [(4,), (1, 2, 3), (8, 16)])
def test_static_forward_equals_the_eager_step_and_padding_writes_nothing(model, tok, sizes):
    engine = decoding_engine(model, tok)
    sched = engine.scheduler.schedule()
    assert sched.num_prefill_seqs == 0 and len(sched.scheduled) == 3
    caches = engine.runner.kv_caches
    eager = engine.runner.execute(sched, engine.kv)  # (3, V); writes the three new tokens' K/V
    before = [(k.clone(), v.clone()) for k, v in caches]
    graphs = DecodeGraphs(model, caches, 4, engine.max_model_len, sizes)
    size = graphs.load(sched, engine.kv)
    assert size == min(s for s in sizes if s >= 3)
    logits = graphs.forward(size)  # (size, V)
    assert logits.shape[0] == size
    torch.testing.assert_close(logits[:3].float(), eager, rtol=1e-4, atol=1e-4)
    written = {engine.kv.slot_mapping(s.seq.request_id, s.num_computed, 1)[0] for s in sched.scheduled}
    for (k0, v0), (k1, v1) in zip(before, caches):
        flat0, flat1 = k0.flatten(0, 1), k1.flatten(0, 1)  # (slots, Hkv, D)
        others = [i for i in range(flat0.shape[0]) if i not in written]
        assert torch.equal(flat0[others], flat1[others]) and torch.equal(
            v0.flatten(0, 1)[others], v1.flatten(0, 1)[others]
        )
        torch.testing.assert_close(flat1[sorted(written)], flat0[sorted(written)])  # rewritten with the same values


def test_only_pure_decode_steps_within_the_sizes_qualify(model, tok):
    engine = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=64))
    engine.add_request("r0", tok.encode(PROMPTS[0]), SamplingParams(temperature=0, max_tokens=8))
    graphs = DecodeGraphs(model, engine.runner.kv_caches, 4, engine.max_model_len, (1, 2))
    prefill = engine.scheduler.schedule()
    assert graphs.load(prefill, engine.kv) is None  # a prompt chunk
    engine = decoding_engine(model, tok)
    assert graphs.load(engine.scheduler.schedule(), engine.kv) is None  # 3 sequences > the largest size 2
    assert graphs.padded_size(2) == 2 and graphs.padded_size(3) is None
    assert graphs.run(prefill, engine.kv) is None
    with pytest.raises(AssertionError, match="CUDA"):
        graphs.capture()


def test_engine_runs_eagerly_on_cpu(model, tok):
    engine = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=64))
    assert engine.runner.graphs is None  # graphs are a CUDA path
    assert EngineConfig(enforce_eager=True).enforce_eager
