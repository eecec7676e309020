"""Fixtures of the engine tests (test_engine, test_offline, test_async_engine, test_output_processor,
test_model_runner): a small BPE tokenizer, a tiny random model over its vocabulary, and a naive greedy reference.
Session-scoped: they are read-only, and training the tokenizer once is enough."""

from __future__ import annotations

import functools

import pytest
import torch

from llm.config import get_config
from llm.model import CausalLM
from llm.tokenizer import train_bpe_tokenizer
from tests.llm.helpers import GREEDY, SENTENCES, unit_logits


@pytest.fixture(scope="session")
def tok():
    return train_bpe_tokenizer(SENTENCES * 10, vocab_size=400)


@pytest.fixture(scope="session")
def model(tok):
    torch.manual_seed(0)
    cfg = get_config("tiny", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, max_position_embeddings=64)
    return unit_logits(CausalLM(cfg))


@pytest.fixture(scope="session")
def naive(model):
    """greedy(prompt ids, n) -> the n tokens a full forward per token picks: what the engine must reproduce."""

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
