"""CausalLM: sizes of the presets, causality, training signal, dtypes, paged path = full path, input checks."""

from __future__ import annotations

import pytest
import torch

from llm.attention import build_attention_metadata
from llm.config import PRESETS, get_config
from llm.kv_cache import allocate_kv_caches
from llm.model import CausalLM, cross_entropy_loss
from llm.moe import load_balancing_loss, router_z_loss


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_sizes(name):
    cfg = PRESETS[name]
    with torch.device("meta"):  # no allocation, no init
        model = CausalLM(cfg)
    assert model.num_params() == cfg.num_params()
    active = cfg.num_params(active=True)
    assert active <= cfg.num_params() and (active == cfg.num_params()) == (cfg.num_experts == cfg.num_experts_per_tok)
    if name.startswith("small"):
        assert 4e6 <= cfg.num_params() <= 6e6 and cfg.num_params() * 4 <= 30e6  # fp32 safetensors <= 30 MB


def test_causal_and_batch_independent():
    torch.manual_seed(0)
    model = CausalLM(get_config("tiny")).eval()
    ids = torch.randint(0, 256, (2, 10))
    changed = ids.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % 256
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[0, :6], b[0, :6])  # the past never sees the future
    assert not torch.allclose(a[0, 6:], b[0, 6:])
    torch.testing.assert_close(a[1], b[1])  # nor other rows of the batch


def test_init_scale():
    torch.manual_seed(0)
    model = CausalLM(get_config("tiny"))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        logits = model(torch.randint(0, 256, (4, 32)))
    # ~uniform prediction at init: the loss starts near log(V)
    loss = cross_entropy_loss(logits[:, :-1], torch.randint(0, 256, (4, 31)))
    assert abs(loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.1


def test_overfits_a_batch_with_router_losses():
    torch.manual_seed(0)
    cfg = get_config("tiny")
    model = CausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 256, (2, 17))
    losses = []
    for _ in range(15):
        logits, router_logits = model(ids[:, :-1], return_router_logits=True)
        ce = cross_entropy_loss(logits, ids[:, 1:])
        loss = (
            ce
            + 0.02 * load_balancing_loss(router_logits, cfg.num_experts, cfg.num_experts_per_tok)
            + 1e-3 * router_z_loss(router_logits)
        )
        opt.zero_grad()
        loss.backward()
        if not losses:  # every parameter gets a gradient: router, all experts, norms, tied head
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        opt.step()
        losses.append(ce.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bf16_forward_and_paged_path_agree():
    torch.manual_seed(0)
    cfg = get_config("tiny")
    model = CausalLM(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, 256, (1, 9))
    caches = allocate_kv_caches(cfg.num_layers, 4, 4, cfg.num_kv_heads, cfg.head_dim, dtype=torch.bfloat16)
    with torch.no_grad():
        full = model(ids)[0]
        assert full.dtype == torch.bfloat16 and torch.isfinite(full).all()
        meta = build_attention_metadata([0], [7], [[3, 1]], 4)
        pre = model.forward_paged(ids[0, :7], meta, caches)
        meta = build_attention_metadata([7], [1], [[3, 1]], 4)
        dec = model.forward_paged(ids[0, 7:8], meta, caches)
        meta = build_attention_metadata([8], [1], [[3, 1, 0]], 4)
        dec2 = model.forward_paged(ids[0, 8:9], meta, caches)
    paged = torch.cat([pre, dec, dec2]).float()
    assert (paged - full.float()).abs().max() < 0.1  # bf16 rounding differs between the two paths only


def test_input_checks():
    model = CausalLM(get_config("tiny", max_position_embeddings=16))
    with pytest.raises(ValueError, match="B, T"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.zeros(1, 17, dtype=torch.long))
    meta = build_attention_metadata([0], [3], [[0]], 4)
    with pytest.raises(ValueError, match="per layer"):
        model.forward_paged(torch.zeros(3, dtype=torch.long), meta, [])


def test_cross_entropy_counts_only_unignored_targets():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g, requires_grad=True)
    y = torch.randint(0, 11, (2, 5), generator=g)
    y[0, :3] = -100
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), y.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(cross_entropy_loss(logits, y), want)
    # a batch of prompt-only sequences: zero loss and zero gradients, not NaN
    none = cross_entropy_loss(logits, torch.full((2, 5), -100))
    none.backward()
    assert none.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
