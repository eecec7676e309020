"""Speculative decoding on the bundled model (models/pqrag-small) answering RAG-style prompts over the Python docs:
greedy answers identical to no speculation, and drafts copied from the passages accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llm import LLM, SamplingParams
from retrieval.corpora import python_docs

MODEL = Path(__file__).resolve().parents[2] / "models" / "pqrag-small"
QUESTIONS = [  # (a phrase of the passage that answers it, the question)
    ('Functions defined with "async def" syntax', "What is a function defined with async def?"),
    ("clause must have a matching type", "What must an except* clause match?"),
    ("guarantees that if the", "What does the with statement guarantee?"),
    ("Default parameter values are evaluated", "How are default argument values evaluated?"),
]


def rag_prompt(llm: LLM, phrase: str, question: str) -> list[int]:
    """The user turn rag.prompt renders (numbered passages, then the question) around one passage: the ~900
    characters of the Python docs around `phrase`, as retrieval would return the chunk that holds it."""
    text = next(d["text"] for d in python_docs() if phrase in d["text"])
    at = text.index(phrase)
    turn = f"Context:\n[1] {text[max(at - 300, 0) : at + 600]}\n\nQuestion: {question}"
    return llm.engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": turn}], add_generation_prompt=True, tokenize=True
    )


@pytest.mark.skipif(not (MODEL / "model.safetensors").exists(), reason="the bundled model is not in this checkout")
def test_bundled_model_greedy_answers_are_identical():
    params = SamplingParams(temperature=0, max_tokens=64)
    plain = LLM(MODEL, device="cpu", dtype=torch.float32)
    prompts = [rag_prompt(plain, t, q) for t, q in QUESTIONS]
    want = plain.generate(prompts, params)
    spec = LLM(
        MODEL,
        device="cpu",
        dtype=torch.float32,
        speculative_config={"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4},
    )
    got = spec.generate(prompts, params)
    assert [o.outputs[0].text for o in got] == [o.outputs[0].text for o in want]
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    s = spec.engine.stats()
    assert s["spec_num_accepted_tokens"] > 10 and s["spec_mean_acceptance_length"] > 1.3, s  # the with answer copies
    assert s["num_steps"] < plain.engine.stats()["num_steps"]
