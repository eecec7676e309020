"""MoE block: grouped-by-expert dispatch equals the per-token definition (values and gradients), routing
invariants, and the router losses' fixed points."""

from __future__ import annotations

import math

import pytest
import torch

from llm.config import get_config
from llm.moe import MoEExperts, SparseMoeBlock, load_balancing_loss, router_z_loss


def naive_moe(experts: MoEExperts, x, topk_ids, topk_weights):
    """The definition, one token at a time."""
    rows = []
    for t in range(x.shape[0]):
        y = 0
        for j in range(topk_ids.shape[1]):
            y = y + topk_weights[t, j] * experts.expert_forward(int(topk_ids[t, j]), x[t : t + 1])[0]
        rows.append(y)
    return torch.stack(rows)


@pytest.fixture()
def block() -> SparseMoeBlock:
    torch.manual_seed(0)
    b = SparseMoeBlock(get_config("tiny", num_experts=5, num_experts_per_tok=2))
    b.reset_parameters(0.3, 0.3)
    return b


def test_grouped_dispatch_matches_per_token_loop(block):
    x = torch.randn(23, 64, requires_grad=True)
    y, logits = block(x)
    w, ids = block.route(logits)
    assert logits.shape == (23, 5) and ids.shape == (23, 2)
    assert len(set(ids.flatten().tolist())) > 2  # several experts really used
    want = naive_moe(block.experts, x, ids, w)
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)

    g = torch.randn_like(y)
    params = [x, block.gate.weight, block.experts.w1, block.experts.w2]
    grads = torch.autograd.grad((y * g).sum(), params, retain_graph=True)
    want_grads = torch.autograd.grad((want * g).sum(), params)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert block.gate.weight.grad is None and grads[1].abs().sum() > 0  # the router learns through the weights


def test_fused_kernel_path_matches(block):
    x = torch.randn(17, 64)
    with torch.no_grad():
        torch.testing.assert_close(block(x, fused=True)[0], block(x)[0], atol=1e-5, rtol=1e-5)


def test_routing_is_fp32_and_renormalised(block):
    logits = torch.randn(9, 5, dtype=torch.bfloat16)
    w, ids = block.route(logits)
    assert w.dtype == torch.float32
    torch.testing.assert_close(w.sum(-1), torch.ones(9))
    assert torch.equal(ids, logits.float().topk(2, dim=-1).indices)


def test_dense_baseline_is_plain_swiglu():
    torch.manual_seed(1)
    b = SparseMoeBlock(get_config("tiny", num_experts=1, num_experts_per_tok=1))
    b.reset_parameters(0.3, 0.3)
    x = torch.randn(6, 64)
    y, logits = b(x)
    assert logits.shape == (6, 1)
    torch.testing.assert_close(y, b.experts.expert_forward(0, x))


def test_router_losses():
    E, k = 8, 2
    uniform = torch.zeros(100, E)
    assert load_balancing_loss(uniform, E, k).item() == pytest.approx(k)  # the balanced optimum is top_k
    collapsed = torch.zeros(100, E)
    collapsed[:, 3] = 30.0
    assert load_balancing_loss([collapsed, collapsed], E, k).item() == pytest.approx(E, rel=1e-3)
    balanced = torch.eye(E).repeat(10, 1) * 30.0  # each expert first choice of 1/E of the tokens, top-1
    assert load_balancing_loss(balanced, E, 1).item() == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValueError):
        load_balancing_loss(uniform, 4, 1)

    assert router_z_loss(uniform).item() == pytest.approx(math.log(E) ** 2)
    big = (torch.randn(50, E) * 5).requires_grad_()
    router_z_loss([big]).backward()
    assert (big.grad.sum(-1) > 0).all()  # gradient descent lowers every token's logsumexp
