"""The offline LLM: engine options as EngineConfig fields (unknown ones refused), prompt forms, validation of the
whole batch before anything is queued, and batches larger than the waiting queue. Fixtures in conftest.py."""

from __future__ import annotations

import pytest

from common.errors import InvalidArgumentError
from llm import LLM, SamplingParams
from llm.engine_config import EngineConfig
from tests.llm.helpers import GREEDY, PROMPTS, assert_matches_naive, make_llm


def test_options_are_engine_config_fields(tmp_path, model, tok):
    from llm.checkpoint import save_model

    save_model(model, tmp_path)
    tok.save(tmp_path)
    llm = LLM(tmp_path, device="cpu", config=EngineConfig(block_size=8), max_num_seqs=2, num_blocks=40)
    cfg = llm.engine.config
    assert (cfg.block_size, cfg.max_num_seqs, cfg.num_blocks) == (8, 2, 40)
    assert llm.engine.scheduler.config.max_num_seqs == 2 and llm.tokenizer is not None
    with pytest.raises(InvalidArgumentError, match=r"unknown engine option.*'blocksize'.*block_size"):
        LLM(tmp_path, device="cpu", blocksize=8)
    with pytest.raises(InvalidArgumentError, match="unknown engine option"):
        LLM.from_model(model, tok, max_seqs=4)
    with pytest.raises(InvalidArgumentError, match="given engine"):
        LLM(engine=llm.engine, max_num_seqs=4)
    with pytest.raises(InvalidArgumentError, match="model_dir"):
        LLM()


def test_prompt_forms_and_batch_validation(model, tok, naive):
    llm = make_llm(model, tok)
    ids = tok.encode(PROMPTS[1])
    single_text = llm.generate(PROMPTS[1], GREEDY)
    single_ids = llm.generate(ids, GREEDY)
    assert len(single_text) == len(single_ids) == 1
    assert single_text[0].token_ids == single_ids[0].token_ids == naive(ids)
    assert single_text[0].prompt == PROMPTS[1] and single_ids[0].prompt is None
    with pytest.raises(InvalidArgumentError, match="2 SamplingParams for 1 prompts"):
        llm.generate([ids], [GREEDY, GREEDY])
    # one bad prompt fails the batch before anything is queued
    with pytest.raises(InvalidArgumentError, match="empty"):
        llm.generate([ids, []], GREEDY)
    assert not llm.engine.has_unfinished_requests() and llm.engine.num_free_blocks == 128
    no_tok = LLM.from_model(model, None, block_size=4, num_blocks=64)
    with pytest.raises(InvalidArgumentError, match="tokenizer"):
        no_tok.generate("text")
    assert no_tok.generate([ids], GREEDY)[0].token_ids == naive(ids)


def test_batch_larger_than_the_waiting_queue(model, tok, naive):
    llm = make_llm(model, tok, max_waiting=1, max_num_seqs=2)
    outs = llm.generate(PROMPTS, GREEDY)  # 4 prompts, a queue of 1
    assert [o.prompt for o in outs] == PROMPTS
    assert_matches_naive(outs, naive)
    assert llm.engine.num_free_blocks == 128 and llm.generate([], GREEDY) == []
    # the per-prompt params pair up in order
    short = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    outs = llm.generate(PROMPTS[:2], [short, GREEDY])
    assert [len(o.token_ids) for o in outs] == [2, GREEDY.max_tokens]
