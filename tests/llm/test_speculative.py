"""Speculative decoding (n-gram drafts) in the engine: greedy output identical to no speculation (and to a naive
loop) under batching, chunked prefill, prefix caching and preemption; seeded sampling identical too; the sampling
distribution checked by a chi-square test; rejected drafts rolled back to the blocks a run without them holds;
stops never passed; the batch size threshold. The random tiny model falls into loops under greedy decoding, which
its own drafts then predict, so drafts are both accepted and rejected."""

from __future__ import annotations

import itertools

import pytest
import torch

from llm import SamplingParams
from llm.config import get_config
from llm.engine import LLMEngine
from llm.engine_config import EngineConfig
from llm.kv_cache import cdiv
from llm.model import CausalLM
from tests.llm.helpers import PROMPTS, make_llm, unit_logits

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
LONG = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def spec_llm(model, tok, **options):
    options.setdefault("speculative_config", {**NGRAM, "disable_by_batch_size": 64})
    return make_llm(model, tok, **options)


def assert_drafts_accepted_and_rejected(engine: LLMEngine) -> None:
    s = engine.stats()
    assert 0 < s["spec_num_accepted_tokens"] < s["spec_num_draft_tokens"], s


@pytest.mark.parametrize(
    "kw",
    [
        dict(),  # everything in one step
        dict(max_num_batched_tokens=9),  # budget cuts drafts and chunks prompts beside them
        dict(max_num_seqs=2, enable_prefix_caching=False),  # continuous batching: requests join as others leave
        dict(num_blocks=20),  # preemption: 20 blocks of 4 cannot hold the four sequences at once
    ],
)
def test_greedy_output_is_identical_to_no_speculation(model, tok, naive, kw):
    plain = make_llm(model, tok, **kw).generate(PROMPTS, LONG)
    llm = spec_llm(model, tok, **kw)
    outs = llm.generate(PROMPTS, LONG)
    assert [o.token_ids for o in outs] == [o.token_ids for o in plain]
    assert [o.text for o in outs] == [o.text for o in plain]
    for o in outs:
        assert o.token_ids == naive(o.prompt_token_ids, LONG.max_tokens)
    assert_drafts_accepted_and_rejected(llm.engine)
    assert llm.engine.num_free_blocks == llm.engine.stats()["num_blocks"]
    if "num_blocks" in kw:
        assert llm.engine.stats()["num_preemptions"] > 0


def test_prefix_cache_hits_keep_greedy_output(model, tok, naive):
    llm = spec_llm(model, tok)
    first = llm.generate(PROMPTS, LONG)
    again = llm.generate(PROMPTS[::-1], LONG)  # prompts (and no rejected draft) hit cached blocks
    assert llm.engine.stats()["prefix_cache_hit_tokens"] > 0
    assert_drafts_accepted_and_rejected(llm.engine)
    for o in first + again:
        assert o.token_ids == naive(o.prompt_token_ids, LONG.max_tokens)
    # a prompt that repeats a whole earlier output hits the blocks those drafted steps wrote
    o = first[2]
    follow = llm.generate([o.prompt_token_ids + o.token_ids], SamplingParams(temperature=0, max_tokens=4))[0]
    assert follow.metrics.num_cached_tokens >= 4 * ((len(o.prompt_token_ids) + 20) // 4)
    assert follow.token_ids == naive(follow.prompt_token_ids, 4)


def test_mixed_batch_of_drafted_and_undrafted_sequences(model, tok, naive):
    llm = spec_llm(model, tok)
    engine, seen = llm.engine, []
    schedule = engine.scheduler.schedule

    def spy(drafts=None):
        out = schedule(drafts)
        seen.append([bool(s.draft) for s in out.scheduled])
        return out

    engine.scheduler.schedule = spy  # type: ignore[method-assign]
    sampled = SamplingParams(temperature=1.0, max_tokens=24, seed=5, ignore_eos=True)
    forked = SamplingParams(n=2, temperature=0, max_tokens=24, ignore_eos=True)  # children share blocks (COW)
    outs = llm.generate(PROMPTS + PROMPTS[1:2], [LONG, LONG, sampled, LONG, forked])
    assert any(any(step) and not all(step) for step in seen)  # drafted and undrafted in one forward
    for o in (outs[0], outs[1], outs[3]):
        assert o.token_ids == naive(o.prompt_token_ids, LONG.max_tokens)
    assert [c.token_ids for c in outs[4].outputs] == [naive(outs[4].prompt_token_ids, LONG.max_tokens)] * 2
    assert llm.engine.num_free_blocks == 128


def test_seeded_sampling_is_identical_to_no_speculation(model, tok):
    params = [SamplingParams(temperature=0.7, max_tokens=24, seed=s, ignore_eos=True, logprobs=2) for s in range(6)] + [
        SamplingParams(temperature=1.0, top_k=5, repetition_penalty=1.3, max_tokens=20, seed=9, ignore_eos=True)
    ]
    prompts = PROMPTS + PROMPTS[:3]
    plain = make_llm(model, tok).generate(prompts, params)
    llm = spec_llm(model, tok)
    outs = llm.generate(prompts, params)
    assert [o.token_ids for o in outs] == [o.token_ids for o in plain]
    for a, b in zip(outs[:6], plain[:6]):  # the logprobs of each row are those of the same position
        for x, y in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            assert x.keys() == y.keys()
            assert all(abs(x[t] - y[t]) < 1e-4 for t in x)
    assert llm.engine.stats()["spec_num_accepted_tokens"] > 0


def test_penalties_and_min_tokens_see_the_accepted_drafts(model, tok, naive):
    eos = tok.eos_id
    params = SamplingParams(temperature=0, max_tokens=24, repetition_penalty=1.5, frequency_penalty=0.3)
    plain = make_llm(model, tok).generate(PROMPTS, params)
    assert [o.token_ids for o in spec_llm(model, tok).generate(PROMPTS, params)] == [o.token_ids for o in plain]
    # min_tokens bans eos / stop tokens per draft row: a stop token inside a draft counts only past min_tokens
    stop_tok = naive(tok.encode(PROMPTS[1]), 24)[10]
    params = SamplingParams(temperature=0, max_tokens=24, min_tokens=12, stop_token_ids=[stop_tok, eos])
    plain = make_llm(model, tok).generate(PROMPTS, params)
    outs = spec_llm(model, tok).generate(PROMPTS, params)
    assert [o.token_ids for o in outs] == [o.token_ids for o in plain]


def test_never_emits_past_a_stop(model, tok, naive):
    ids = tok.encode(PROMPTS[0])
    full = naive(ids, 24)
    text = tok.decode(full)
    stop_str = text[len(text) // 2 : len(text) // 2 + 3]
    cases = [
        SamplingParams(temperature=0, max_tokens=9, ignore_eos=True),  # max_tokens inside an accepted draft
        SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop_token_ids=[full[13]]),
        SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop_str]),
    ]
    for p in cases:
        want = make_llm(model, tok).generate([ids], p)[0]
        llm = spec_llm(model, tok)
        got = llm.generate([ids], p)[0]
        assert (got.token_ids, got.text, got.outputs[0].finish_reason) == (
            want.token_ids,
            want.text,
            want.outputs[0].finish_reason,
        )
        assert len(got.token_ids) <= (p.max_tokens or 0)
        assert llm.engine.num_free_blocks == 128


def test_rollback_leaves_the_blocks_of_a_run_without_the_rejected_tokens(model, tok):
    ids = tok.encode(PROMPTS[2])
    runs = {}
    for name, spec in (("plain", None), ("spec", {**NGRAM, "num_speculative_tokens": 6})):
        engine = LLMEngine(
            model,
            tok,
            EngineConfig(block_size=4, num_blocks=64, enable_prefix_caching=False, speculative_config=spec),
        )
        engine.add_request("r", ids, LONG)
        seq = engine.scheduler.groups["r"].seqs[0]
        free_at: dict[int, int] = {}  # output tokens -> free blocks after that step
        while engine.has_unfinished_requests():
            engine.step()
            if not seq.finished:
                free_at[seq.num_output_tokens] = engine.num_free_blocks
                assert seq.num_computed_tokens == seq.num_tokens - 1  # the last sampled token is not cached yet
                assert len(engine.kv.get_block_ids("r")) == cdiv(seq.num_computed_tokens, 4)
        runs[name] = (free_at, engine)
    spec_free, engine = runs["spec"]
    plain_free, _ = runs["plain"]
    assert engine.stats()["spec_num_drafts"] > 0
    assert_drafts_accepted_and_rejected(engine)
    assert spec_free and all(plain_free[n] == free for n, free in spec_free.items())
    assert len(spec_free) < len(plain_free)  # fewer steps


def test_kv_trim_frees_tail_blocks_only():
    from llm.kv_cache import KVCacheManager

    class Req:
        request_id = "r"
        num_computed_tokens = 0
        all_token_ids = list(range(10))

    kv, req = KVCacheManager(16, 4, True), Req()
    kv.allocate_slots(req, 10)  # 3 blocks; 2 full ones hashed
    req.num_computed_tokens = 5  # 5 accepted: 2 blocks hold them
    kv.trim(req)
    assert len(kv.get_block_ids("r")) == 2 and kv.num_free_blocks == 14
    req.num_computed_tokens = 8
    kv.trim(req)
    assert len(kv.get_block_ids("r")) == 2


def test_batch_size_threshold(model, tok, naive):
    llm = spec_llm(model, tok, speculative_config={**NGRAM, "disable_by_batch_size": 2})
    outs = llm.generate(PROMPTS, LONG)  # four at once: no drafts until two have finished
    for o in outs:
        assert o.token_ids == naive(o.prompt_token_ids, LONG.max_tokens)
    llm4 = spec_llm(model, tok, speculative_config={**NGRAM, "disable_by_batch_size": 1})
    llm4.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    assert llm4.engine.stats()["spec_num_drafts"] == 0  # never alone: the four finish together


# ---- the distribution under sampling ------------------------------------------------------------------------------
V_SMALL = 5
PROMPT = [1, 2, 3, 1, 2, 3, 1, 2]  # drafts "3 1 2 ..." are proposed from the first decode on


@pytest.fixture(scope="module")
def small_vocab_model():
    torch.manual_seed(3)
    cfg = get_config("tiny", vocab_size=V_SMALL, eos_token_id=0, max_position_embeddings=32)
    return unit_logits(CausalLM(cfg))


def exact_joint(model, prompt: list[int], n: int, temperature: float) -> dict[tuple[int, ...], float]:
    """p(t1..tn | prompt) for every n-token continuation, by full forwards."""
    out = {}
    with torch.no_grad():
        for seq in itertools.product(range(V_SMALL), repeat=n):
            logits = model(torch.tensor([prompt + list(seq)]))[0, len(prompt) - 1 : -1].float()
            logp = (logits / temperature).log_softmax(-1)
            out[seq] = float(logp.gather(1, torch.tensor(seq)[:, None]).sum().exp())
    return out


def chi_square_p_value(counts: dict[tuple[int, ...], int], probs: dict[tuple[int, ...], float], total: int) -> float:
    """Pearson's test; cells expected below 5 are pooled into one. p-value = Q(df/2, stat/2)."""
    stat, df, pooled_o, pooled_e = 0.0, -1, 0, 0.0
    for cell, p in probs.items():
        e, o = p * total, counts.get(cell, 0)
        if e < 5:
            pooled_o, pooled_e = pooled_o + o, pooled_e + e
            continue
        stat, df = stat + (o - e) ** 2 / e, df + 1
    if pooled_e > 0:
        stat, df = stat + (pooled_o - pooled_e) ** 2 / pooled_e, df + 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0), torch.tensor(stat / 2.0)))


def test_sampling_distribution_matches_the_model(small_vocab_model):
    n_tokens, total = 3, 1000
    engine = LLMEngine(
        small_vocab_model,
        None,
        EngineConfig(
            block_size=4,
            num_blocks=512,
            max_num_seqs=100,
            speculative_config={**NGRAM, "disable_by_batch_size": 100},
        ),
    )
    params = SamplingParams(temperature=1.0, max_tokens=n_tokens, ignore_eos=True)
    counts: dict[tuple[int, ...], int] = {}
    for i in range(total):
        engine.add_request(f"r{i}", PROMPT, params)
        if engine.scheduler.num_waiting >= 100 or i == total - 1:
            while engine.has_unfinished_requests():
                for o in engine.step().finished:
                    key = tuple(o.outputs[0].token_ids)
                    counts[key] = counts.get(key, 0) + 1
    s = engine.stats()
    assert 0 < s["spec_num_accepted_tokens"] < s["spec_num_draft_tokens"], s
    exact = exact_joint(small_vocab_model, PROMPT, n_tokens, 1.0)
    assert chi_square_p_value(counts, exact, total) > 1e-3
    # the test can fail: the same samples against the distribution at another temperature are rejected
    assert chi_square_p_value(counts, exact_joint(small_vocab_model, PROMPT, n_tokens, 0.7), total) < 1e-3
