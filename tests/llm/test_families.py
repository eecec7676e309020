"""Every supported family against transformers, from a tiny random checkpoint transformers wrote: logits within 1e-4
in float32, and greedy tokens through the paged engine (prefill, decode, a prefix-cache hit) equal to transformers'
generate. The Triton kernels with each family's head_dim and GQA group: tests/kernels/test_families.py."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from common.errors import InvalidArgumentError  # noqa: E402
from llm.checkpoint import load_model  # noqa: E402
from llm.config import ModelConfig  # noqa: E402
from llm.offline import LLM  # noqa: E402
from llm.sampler import SamplingParams  # noqa: E402
from tests.llm.family_models import FAMILIES, write_checkpoint  # noqa: E402

ATOL = 1e-4  # float32 on both sides; the sums differ only in order


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    hf = write_checkpoint(directory, request.param)
    return request.param, directory, hf


def test_checkpoint_is_sharded_and_read_as_its_family(family):
    model_type, directory, hf = family
    assert (directory / "model.safetensors.index.json").exists()  # the shards path, for every family
    cfg = ModelConfig.load(directory)
    assert cfg.model_type == model_type
    model = load_model(directory)
    assert model.num_params() == hf.num_parameters() == cfg.num_params()
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == cfg.tie_word_embeddings


def test_logits_match_transformers(family):
    _, directory, hf = family
    model = load_model(directory, dtype=torch.float32)
    ids = torch.randint(0, 96, (2, 21), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits
        got = model(ids)
    assert want.abs().max() > 1.0  # not a comparison of near-zero tensors
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_greedy_tokens_match_transformers_through_the_paged_engine(family):
    _, directory, hf = family
    llm = LLM(directory, dtype=torch.float32, block_size=4, num_blocks=64)
    g = torch.Generator().manual_seed(2)
    shared = torch.randint(0, 96, (13,), generator=g).tolist()  # three full blocks of 4 shared
    prompts = [shared + [5, 7], torch.randint(0, 96, (6,), generator=g).tolist(), shared + [9]]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    outs = llm.generate(prompts[:2], params)  # two fresh prompts batched: prefill, then decode steps
    hit = llm.generate(prompts[2:], params)  # shares 12 cached tokens with the first: a prefix-cache hit
    assert llm.engine.stats()["prefix_cache_hit_tokens"] >= 12
    for prompt, out in zip(prompts, outs + hit):
        with torch.no_grad():
            ref = hf.generate(
                torch.tensor([prompt]), max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0
            )
        assert out.outputs[0].token_ids == ref[0, len(prompt) :].tolist()


def test_the_sliding_window_is_refused_past_its_span(tmp_path):
    """Mistral with a 16-token window: exact (full attention equals the window) up to 16 tokens, and a request that
    would need the window is refused, naming it."""
    hf = write_checkpoint(tmp_path, "mistral", sliding_window=16, shard=False)
    assert json.loads((tmp_path / "config.json").read_text())["sliding_window"] == 16
    llm = LLM(tmp_path, dtype=torch.float32, block_size=4, num_blocks=32)
    assert llm.engine.max_model_len == 16
    ids = torch.randint(0, 96, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path, dtype=torch.float32)(ids), hf(ids).logits, atol=ATOL, rtol=0)
    with pytest.raises(InvalidArgumentError, match="sliding-window attention .*16 tokens"):
        llm.generate([list(range(10))], SamplingParams(max_tokens=10))
    with pytest.raises(InvalidArgumentError, match="sliding window"):
        LLM(tmp_path, max_model_len=64)


def test_an_unknown_family_lists_the_supported_ones(tmp_path):
    write_checkpoint(tmp_path, "mistral", shard=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2", "architectures": ["GPT2LMHead"]}))
    with pytest.raises(InvalidArgumentError, match="model_type='gpt2'; pqrag serves these families: llama, mistral"):
        load_model(tmp_path)
