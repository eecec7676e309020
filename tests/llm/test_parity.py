"""Logit parity with transformers' MixtralForCausalLM (fp32, eager attention) on random weights of tiny configs:
full forward, router logits, and the paged engine path (prefill, chunked prefill, decode) step by step."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import MixtralConfig, MixtralForCausalLM  # noqa: E402

from llm.attention import build_attention_metadata  # noqa: E402
from llm.checkpoint import hf_to_internal  # noqa: E402
from llm.config import ModelConfig  # noqa: E402
from llm.kv_cache import allocate_kv_caches  # noqa: E402
from llm.model import CausalLM  # noqa: E402
from llm.moe import load_balancing_loss  # noqa: E402

ATOL = 1e-4


def make_pair(num_experts=4, top_k=2, kv_heads=2, tie=False, seed=0) -> tuple[MixtralForCausalLM, CausalLM]:
    """A random transformers Mixtral and the same weights in our CausalLM. Weights are scaled to O(1) logits
    (the default 0.02 init makes every model look alike) so routing and attention actually matter."""
    torch.manual_seed(seed)
    hc = MixtralConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        head_dim=16,
        num_local_experts=num_experts,
        num_experts_per_tok=top_k,
        tie_word_embeddings=tie,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attn_implementation="eager",
    )
    hf = MixtralForCausalLM(hc).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p.shape[-1] ** -0.5)
            else:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    cfg = ModelConfig.from_hf_dict(hc.to_dict())
    ours = CausalLM(cfg).eval()
    missing, unexpected = ours.load_state_dict(hf_to_internal(dict(hf.state_dict()), cfg), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    return hf, ours


@pytest.mark.parametrize("num_experts,top_k,kv_heads,tie", [(4, 2, 2, False), (1, 1, 4, True), (4, 1, 1, False)])
def test_full_forward_matches_transformers(num_experts, top_k, kv_heads, tie):
    hf, ours = make_pair(num_experts, top_k, kv_heads, tie)
    ids = torch.randint(0, 96, (3, 17))
    with torch.no_grad():
        ref = hf(ids, output_router_logits=True)
        logits, router_logits = ours(ids, return_router_logits=True)
    assert logits.shape == (3, 17, 96)
    assert ref.logits.abs().max() > 1.0  # the comparison below is not between near-zero tensors
    torch.testing.assert_close(logits, ref.logits, atol=ATOL, rtol=0)
    assert len(router_logits) == len(ref.router_logits) == 2
    for a, b in zip(router_logits, ref.router_logits):
        torch.testing.assert_close(a, b.reshape(a.shape), atol=ATOL, rtol=0)
    if num_experts > 1:
        from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

        want = load_balancing_loss_func(tuple(ref.router_logits), num_experts, top_k)
        torch.testing.assert_close(load_balancing_loss(router_logits, num_experts, top_k), want, atol=1e-5, rtol=0)


def test_paged_forward_step_by_step_matches_transformers():
    """Two sequences through a hand-made paged cache (block size 4, scattered block ids): a joint prefill, a
    chunked prefill next to a decode, then token-by-token decoding; every step's logits equal transformers'
    full-sequence logits at the same positions."""
    hf, ours = make_pair()
    cfg, bs = ours.config, 4
    seqs = [torch.randint(0, 96, (13,)).tolist(), torch.randint(0, 96, (9,)).tolist()]
    with torch.no_grad():
        full = [hf(torch.tensor([s])).logits[0] for s in seqs]  # (T, V) each
    tables = [[7, 2, 9, 0], [4, 11, 5]]  # out of order and interleaved: catches block/offset mix-ups
    caches = allocate_kv_caches(cfg.num_layers, 12, bs, cfg.num_kv_heads, cfg.head_dim)
    done = [0, 0]  # tokens already in the cache per sequence

    def step(query_lens: list[int]) -> None:
        order = [i for i in range(2) if query_lens[i] > 0]
        meta = build_attention_metadata(
            [done[i] for i in order], [query_lens[i] for i in order], [tables[i] for i in order], bs
        )
        ids = torch.tensor([t for i in order for t in seqs[i][done[i] : done[i] + query_lens[i]]])
        with torch.no_grad():
            logits = ours.forward_paged(ids, meta, caches)
        start = 0
        for i in order:
            want = full[i][done[i] : done[i] + query_lens[i]]
            torch.testing.assert_close(logits[start : start + query_lens[i]], want, atol=ATOL, rtol=0)
            start += query_lens[i]
            done[i] += query_lens[i]

    step([5, 3])  # two fresh prompts: varlen flash attention over the new tokens only
    step([4, 1])  # a chunked prefill after a cached prefix (paged prefill kernel) beside a decode
    step([3, 0])  # prefill crossing a block boundary, alone
    while done[0] < len(seqs[0]) or done[1] < len(seqs[1]):  # decode-only steps, one or two sequences
        step([int(done[0] < len(seqs[0])), int(done[1] < len(seqs[1]))])
    assert done == [13, 9]


def test_paged_forward_sampling_indices():
    """logits_indices=meta.last_token_indices() returns each sequence's last-position logits only."""
    hf, ours = make_pair(seed=1)
    cfg = ours.config
    seqs = [torch.randint(0, 96, (6,)).tolist(), torch.randint(0, 96, (3,)).tolist()]
    caches = allocate_kv_caches(cfg.num_layers, 6, 4, cfg.num_kv_heads, cfg.head_dim)
    meta = build_attention_metadata([0, 0], [6, 3], [[1, 3], [5]], 4)
    with torch.no_grad():
        logits = ours.forward_paged(torch.tensor(seqs[0] + seqs[1]), meta, caches, meta.last_token_indices())
        want = torch.stack([hf(torch.tensor([s])).logits[0, -1] for s in seqs])
    assert logits.shape == (2, 96)
    torch.testing.assert_close(logits, want, atol=ATOL, rtol=0)
