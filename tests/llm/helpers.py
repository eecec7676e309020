"""Shared pieces of the engine tests: the texts and prompts they run, a random model with O(1) logits, the offline
LLM over tiny KV pools, and the check against a naive greedy loop (the fixtures are in conftest.py)."""

from __future__ import annotations

import torch

from llm.offline import LLM
from llm.sampler import SamplingParams

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


def unit_logits(model: torch.nn.Module) -> torch.nn.Module:
    """Weights N(0, 1/fan_in), so logits are O(1): with the 0.02 init every logit is ~0 and greedy ties are likely."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p.shape[-1] ** -0.5)
    return model.eval()


def make_llm(model, tok, **options) -> LLM:
    """The offline LLM over a tiny pool (block size 4, 128 blocks) unless options say otherwise."""
    options.setdefault("block_size", 4)
    options.setdefault("num_blocks", 128)
    return LLM.from_model(model, tok, **options)


def assert_matches_naive(outs, naive) -> None:
    for o in outs:
        assert o.token_ids == naive(o.prompt_token_ids), o.prompt
        assert o.outputs[0].finish_reason == "length"
