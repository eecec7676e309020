"""SamplingParams validation and the batched sampler's transforms against straightforward per-row references."""

from __future__ import annotations

import math

import pytest
import torch

from llm.sampler import (
    Sampler,
    SamplingParams,
    apply_min_p,
    apply_penalties,
    apply_top_k_top_p,
    make_batch,
    random_sample,
)

V = 50


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n=0),
        dict(max_tokens=0),
        dict(min_tokens=-1),
        dict(min_tokens=5, max_tokens=4),
        dict(temperature=-0.1),
        dict(temperature=float("nan")),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(top_k=-2),
        dict(min_p=1.5),
        dict(repetition_penalty=0.0),
        dict(presence_penalty=3.0),
        dict(frequency_penalty=-2.5),
        dict(seed="x"),
        dict(logprobs=-1),
        dict(stop=[""]),
        dict(stop_token_ids=[-1]),
    ],
)
def test_params_validation(kwargs):
    with pytest.raises(ValueError, match="SamplingParams"):
        SamplingParams(**kwargs)


def test_params_defaults_and_normalisation():
    p = SamplingParams(stop="###", temperature=0)
    assert p.stop_list == ["###"] and p.greedy and not p.has_penalties
    assert SamplingParams(max_tokens=None).max_tokens is None
    c = SamplingParams(n=3, seed=7).child(2)
    assert c.n == 1 and c.seed == 9


def ref_penalties(logits, prompts, outputs, rep, pres, freq):
    out = logits.clone()
    for i in range(logits.shape[0]):
        seen = set(prompts[i]) | set(outputs[i])
        for t in seen:
            x = out[i, t]
            out[i, t] = x / rep[i] if x > 0 else x * rep[i]
        for t in set(outputs[i]):
            out[i, t] -= freq[i] * outputs[i].count(t) + pres[i]
    return out


def test_penalties_match_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, V, generator=g)
    prompts = [[1, 2, 3, 3], [4], [5, 6]]
    outputs = [[3, 7, 7, 7], [], [6, 6, 9]]
    rep, pres, freq = [1.3, 1.0, 0.8], [0.5, 0.0, -0.3], [0.2, 1.0, 0.7]
    params = [
        SamplingParams(repetition_penalty=r, presence_penalty=p, frequency_penalty=f)
        for r, p, f in zip(rep, pres, freq)
    ]
    b = make_batch(params, V, prompts, outputs)
    got = apply_penalties(
        logits, b.prompt_ids, b.output_ids, b.repetition_penalty, b.presence_penalty, b.frequency_penalty
    )
    torch.testing.assert_close(got, ref_penalties(logits, prompts, outputs, rep, pres, freq))


def ref_top_k_top_p(row: torch.Tensor, k: int, p: float) -> torch.Tensor:
    vals, order = row.sort(descending=True)
    keep = set(order[:k].tolist())
    probs = vals[:k].softmax(-1).tolist()
    mass, nucleus = 0.0, set()
    for idx, pr in zip(order[:k].tolist(), probs):
        nucleus.add(idx)
        mass += pr
        if mass >= p:
            break
    keep &= nucleus
    return torch.tensor([row[j].item() if j in keep else -math.inf for j in range(row.shape[0])])


@pytest.mark.parametrize(
    "ks,ps",
    [
        ([V, 5, 1, 20], [1.0, 1.0, 1.0, 1.0]),
        ([V, V, V, V], [0.9, 0.5, 0.01, 1.0]),
        ([10, 3, V, 7], [0.8, 0.3, 0.6, 1.0]),
    ],
)
def test_top_k_top_p_match_reference(ks, ps):
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(1)) * 2
    got = apply_top_k_top_p(logits, torch.tensor(ks), torch.tensor(ps))
    for i in range(4):
        want = ref_top_k_top_p(logits[i], ks[i], ps[i])
        assert torch.equal(torch.isinf(got[i]), torch.isinf(want)), i
        torch.testing.assert_close(got[i][~torch.isinf(want)], want[~torch.isinf(want)])


def test_min_p_matches_reference():
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(2)) * 3
    mins = [0.0, 0.1, 0.5]
    got = apply_min_p(logits, torch.tensor(mins))
    for i, mp in enumerate(mins):
        probs = logits[i].softmax(-1)
        drop = probs < mp * probs.max()
        assert torch.equal(torch.isinf(got[i]), drop)


def test_random_sample_distribution_and_seeds():
    probs = torch.tensor([[0.1, 0.2, 0.7, 0.0]]).repeat(20000, 1)
    counts = torch.bincount(random_sample(probs, [None] * 20000), minlength=4).float() / 20000
    torch.testing.assert_close(counts, probs[0], atol=0.02, rtol=0)
    # A seeded row draws the same token whatever the other rows are.
    p = torch.softmax(torch.randn(5, V), -1)
    a = random_sample(p[2:3], [torch.Generator().manual_seed(42)])
    gens = [None, None, torch.Generator().manual_seed(42), None, torch.Generator().manual_seed(1)]
    b = random_sample(p, gens)
    assert a[0] == b[2]


def test_sampler_greedy_banned_and_logprobs():
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(3))
    params = [
        SamplingParams(temperature=0, logprobs=3),
        SamplingParams(temperature=0.8, top_k=1),
        SamplingParams(temperature=0),
        SamplingParams(temperature=1.0, seed=5, logprobs=0),
    ]
    best = logits.argmax(-1)
    banned = [[], [], [int(best[2])], []]
    b = make_batch(params, V, generators=[None, None, None, torch.Generator().manual_seed(5)], banned_ids=banned)
    out = Sampler()(logits, b)
    assert out.token_ids[0] == best[0]
    assert out.token_ids[1] == best[1]  # top_k=1 is greedy whatever the temperature
    second = logits[2].clone()
    second[best[2]] = -math.inf
    assert out.token_ids[2] == second.argmax()  # the banned argmax is skipped
    logp = logits.log_softmax(-1)
    torch.testing.assert_close(out.logprobs, logp.gather(1, out.token_ids[:, None])[:, 0])
    torch.testing.assert_close(out.top_logprobs[0], logp[0].topk(3).values)
    # a seeded row is reproducible
    b2 = make_batch(params[3:], V, generators=[torch.Generator().manual_seed(5)])
    assert Sampler()(logits[3:], b2).token_ids[0] == out.token_ids[3]


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_sampler_temperature_matches_softmax(temperature):
    N, small_v = 20000, 6
    logits = torch.randn(1, small_v, generator=torch.Generator().manual_seed(4)).repeat(N, 1)
    ids = Sampler()(logits, make_batch([SamplingParams(temperature=temperature)] * N, small_v)).token_ids
    freq = torch.bincount(ids, minlength=small_v).float() / N
    torch.testing.assert_close(freq, (logits[0] / temperature).softmax(-1), atol=0.015, rtol=0)
