"""generation_config.json: the eos ids the engine stops on, and the default sampling of a request that sets none."""

from __future__ import annotations

import json

import pytest

from common.errors import InvalidArgumentError
from llm.engine import LLMEngine
from llm.engine_config import EngineConfig
from llm.generation_config import GenerationConfig
from llm.offline import LLM
from llm.sampler import SamplingParams
from tests.llm.helpers import PROMPTS


def test_read_as_transformers_means_it(tmp_path):
    assert GenerationConfig.load(tmp_path) == GenerationConfig()  # no file: nothing to add
    (tmp_path / "generation_config.json").write_text(
        json.dumps(
            {
                "eos_token_id": [128001, 128009],
                "do_sample": True,
                "temperature": 0.6,
                "top_p": 0.9,
                "max_new_tokens": 64,
            }
        )
    )
    gc = GenerationConfig.load(tmp_path)
    assert gc.eos_token_ids == (128001, 128009)
    assert dict(gc.sampling) == {"temperature": 0.6, "top_p": 0.9, "max_tokens": 64}
    greedy = GenerationConfig.from_dict({"eos_token_id": 2, "do_sample": False, "temperature": 0.7, "top_k": 20})
    assert greedy.eos_token_ids == (2,) and dict(greedy.sampling) == {"temperature": 0.0}
    with pytest.raises(InvalidArgumentError, match="eos_token_id"):
        GenerationConfig.from_dict({"eos_token_id": "</s>"})


def test_pqrag_grounding_names_one_of_the_rag_groundings():
    from rag.request import GROUNDINGS

    assert GenerationConfig.from_dict({}).grounding is None  # free decoding (checkpoints users bring)
    for g in GROUNDINGS:
        assert GenerationConfig.from_dict({"pqrag_grounding": g}).grounding == g
    with pytest.raises(InvalidArgumentError, match='"free", "quote" or "extract", got \'strict\''):
        GenerationConfig.from_dict({"pqrag_grounding": "strict"})


def test_the_defaults_apply_only_to_a_request_that_sets_no_sampling_field():
    gc = GenerationConfig.from_dict({"temperature": 0.7, "top_k": 20, "repetition_penalty": 1.05})
    assert gc.defaults_for({}) == {"temperature": 0.7, "top_k": 20, "repetition_penalty": 1.05}
    assert gc.defaults_for({"max_tokens": 9, "seed": 1}) == gc.defaults_for({})  # a length or a seed is no sampling
    assert gc.defaults_for({"temperature": 0.0}) == {} and gc.defaults_for({"top_p": 0.5}) == {}


def engine(model, tok, gc: GenerationConfig) -> LLMEngine:
    return LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=128), gc)


def test_the_engine_stops_on_any_eos_of_generation_config(model, tok, naive):
    prompt = tok.encode(PROMPTS[0])
    ref = naive(prompt, 8)
    stop_at = next(i for i in range(2, 8) if ref[i] not in ref[:i])  # a token first seen at step i
    llm = LLM(engine=engine(model, tok, GenerationConfig(eos_token_ids=(ref[stop_at], 99999))))
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=8))[0].outputs[0]
    assert out.token_ids == ref[: stop_at + 1] and out.finish_reason == "stop"
    ignored = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0]
    assert ignored.outputs[0].token_ids == ref


def test_generate_without_params_samples_as_the_checkpoint_says(model, tok, naive):
    gc = GenerationConfig.from_dict({"do_sample": False, "max_new_tokens": 5})
    llm = LLM(engine=engine(model, tok, gc))
    assert llm.engine.default_sampling_params() == SamplingParams(temperature=0.0, max_tokens=5)
    assert llm.engine.default_sampling_params(top_p=0.5).temperature == 1.0  # the request's own sampling wins
    prompt = tok.encode(PROMPTS[1])
    out = llm.generate([prompt])[0].outputs[0]  # no params: greedy, 5 tokens
    assert out.token_ids == naive(prompt, 5)[: len(out.token_ids)] and len(out.token_ids) <= 5
