"""Speculative decoding on the bundled model (models/pqrag-small) answering RAG prompts over the Python docs, built
the server's way (rag.prompt.build_prompt): greedy answers identical to no speculation, free and in quote mode (the
bundled model's default), and in quote mode the drafts (the tokens the quote forces) accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llm import LLM, SamplingParams
from rag.passages import Passage
from rag.pipeline import quote_index
from rag.prompt import build_prompt
from retrieval.corpora import python_docs

MODEL = Path(__file__).resolve().parents[2] / "models" / "pqrag-small"
QUESTIONS = [  # (a phrase of the passage that answers it, the question)
    ('Functions defined with "async def" syntax', "What is a function defined with async def?"),
    ("clause must have a matching type", "What must an except* clause match?"),
    ("guarantees that if the", "What does the with statement guarantee?"),
    ("Default parameter values are evaluated", "How are default argument values evaluated?"),
]
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4}


def rag_prompts(llm: LLM, max_tokens: int):
    """Per question (prompt ids, passages): the ~900 characters of the Python docs around `phrase` as the one
    passage, as retrieval would return the chunk that holds it."""
    docs = list(python_docs())
    out = []
    for phrase, question in QUESTIONS:
        doc = next(d for d in docs if phrase in d["text"])
        at = doc["text"].index(phrase)
        lo, hi = max(at - 300, 0), at + 600
        hit = Passage(doc["id"], 0, 0.9, doc["text"][lo:hi], doc.get("source", ""), lo, hi)
        p = build_prompt(
            llm.engine.tokenizer, [{"role": "user", "content": question}], [hit], llm.engine.max_model_len, max_tokens
        )
        out.append((p.token_ids, p.passages))
    return out


@pytest.mark.skipif(not (MODEL / "model.safetensors").exists(), reason="the bundled model is not in this checkout")
@pytest.mark.parametrize("grounding", ["free", "quote"])
def test_bundled_model_greedy_answers_are_identical(grounding):
    plain = LLM(MODEL, device="cpu", dtype=torch.float32)
    built = rag_prompts(plain, 64)
    tok = plain.engine.tokenizer
    params = [
        SamplingParams(temperature=0, max_tokens=64, constraint=quote_index(tok, ps) if grounding == "quote" else None)
        for _, ps in built
    ]
    ids = [i for i, _ in built]
    want = plain.generate(ids, params)
    spec = LLM(MODEL, device="cpu", dtype=torch.float32, speculative_config=NGRAM)
    got = spec.generate(ids, params)
    assert [o.outputs[0].text for o in got] == [o.outputs[0].text for o in want]
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    s = spec.engine.stats()
    assert s["spec_num_drafts"] > 0, s
    if grounding == "quote":  # every answer quotes its passage: the drafts are the quote's next tokens
        assert s["spec_acceptance_rate"] > 0.6 and s["spec_mean_acceptance_length"] > 2.0, s
        assert s["num_steps"] < plain.engine.stats()["num_steps"]
