"""Sparse mixture-of-experts feed-forward: a linear router, top-k SwiGLU experts per token, and optionally a shared
expert (Qwen2-MoE) that every token goes through, scaled by sigmoid(shared_expert_gate(x)).

The families differ only in configuration: `norm_topk_prob` (Mixtral and Qwen3-MoE renormalise the top-k weights
to sum 1; OLMoE and Qwen1.5-MoE keep the raw softmax probabilities) and `shared_expert_intermediate_size`.

Tokens are grouped by expert (one sort, then a loop over experts with a contiguous slice each, index_add back),
so the cost is proportional to the routed tokens and there is no Python loop over tokens. The expert weights are
stacked (E, I, H) tensors, ready for a grouped GEMM kernel; checkpoint.py maps them to Hugging Face's per-expert
`experts.E.w1/w2/w3` names.

Also the router losses the trainer adds: the Switch/Mixtral load-balancing loss and the ST-MoE router z-loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from llm.config import ModelConfig
from llm.mlp import MLP


class MoEExperts(nn.Module):
    """E SwiGLU experts: expert e maps x -> w2[e] @ (silu(w1[e] @ x) * (w3[e] @ x))."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.num_experts = num_experts
        self.w1 = nn.Parameter(torch.empty(num_experts, intermediate_size, hidden_size))  # gate proj, (E, I, H)
        self.w3 = nn.Parameter(torch.empty(num_experts, intermediate_size, hidden_size))  # up proj, (E, I, H)
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))  # down proj, (E, H, I)

    def expert_forward(self, e: int, x: torch.Tensor) -> torch.Tensor:
        # x (n, H) -> (n, H)
        return F.linear(F.silu(F.linear(x, self.w1[e])) * F.linear(x, self.w3[e]), self.w2[e])

    def forward(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        """x (N, H); topk_ids (N, k) int64; topk_weights (N, k) -> (N, H) = sum_j weight_j * expert_{id_j}(x)."""
        n, k = topk_ids.shape
        if self.num_experts == 1:  # dense baseline: every token goes to expert 0 with weight 1
            return self.expert_forward(0, x) * topk_weights[:, :1]
        flat_ids = topk_ids.reshape(-1)  # (N*k,)
        order = torch.argsort(flat_ids, stable=True)  # assignments grouped by expert, token order kept inside a group
        token_idx = order // k  # (N*k,) source token of each sorted assignment
        # One host sync for the group sizes; the slices below need Python ints.
        counts = torch.bincount(flat_ids, minlength=self.num_experts).tolist()
        xs = x.index_select(0, token_idx)  # (N*k, H)
        ys = torch.empty_like(xs)
        start = 0
        for e, c in enumerate(counts):
            if c:
                ys[start : start + c] = self.expert_forward(e, xs[start : start + c])
                start += c
        ys = ys * topk_weights.reshape(-1, 1)[order].to(ys.dtype)
        return torch.zeros_like(x).index_add_(0, token_idx, ys)


class SparseMoeBlock(nn.Module):
    """Router + experts (+ the shared expert). forward(x (N, H)) -> (y (N, H), router_logits (N, E))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)  # router
        self.experts = MoEExperts(config.num_experts, config.hidden_size, config.intermediate_size)
        self.shared_expert: MLP | None = None
        self.shared_expert_gate: nn.Linear | None = None
        if config.shared_expert_intermediate_size:
            self.shared_expert = MLP(config.hidden_size, config.shared_expert_intermediate_size)
            self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias=False)

    def route(self, router_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """router_logits (N, E) -> topk_weights (N, k) float32 (renormalised to sum 1 when norm_topk_prob),
        topk_ids (N, k) int64."""
        # Softmax in fp32: in bf16 near-tied experts flip and routing becomes noisy.
        probs = torch.softmax(router_logits.float(), dim=-1)
        topk_weights, topk_ids = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            topk_weights = topk_weights / topk_weights.sum(dim=-1, keepdim=True)
        return topk_weights, topk_ids

    def forward(self, x: torch.Tensor, fused: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """fused=True runs the experts through `kernels.fused_moe` (inference: the dispatch picks a Triton kernel
        on CUDA when there is one); the default grouped path is differentiable for training. The shared expert is
        dense (every token): a plain GEMM beside the routed experts on either path."""
        router_logits = self.gate(x)  # (N, E)
        topk_weights, topk_ids = self.route(router_logits)
        if fused:
            e = self.experts
            y = kernels.fused_moe(x, e.w1, e.w3, e.w2, topk_weights, topk_ids)
        else:
            y = self.experts(x, topk_ids, topk_weights)
        if self.shared_expert is not None:
            assert self.shared_expert_gate is not None
            y = y + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return y, router_logits

    @torch.no_grad()
    def reset_parameters(self, std: float, out_std: float) -> None:
        nn.init.normal_(self.gate.weight, std=std)
        nn.init.normal_(self.experts.w1, std=std)
        nn.init.normal_(self.experts.w3, std=std)
        nn.init.normal_(self.experts.w2, std=out_std)
        if self.shared_expert is not None:
            assert self.shared_expert_gate is not None
            self.shared_expert.reset_parameters(std, out_std)
            nn.init.normal_(self.shared_expert_gate.weight, std=std)


def _as_2d(router_logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-layer (N, E) logits (or one (..., E) tensor) -> (L*N, E) float32: all layers weigh the same."""
    if isinstance(router_logits, torch.Tensor):
        return router_logits.reshape(-1, router_logits.shape[-1]).float()
    if len(router_logits) == 0:
        raise ValueError("router_logits is empty; pass the list returned by forward(..., return_router_logits=True)")
    return torch.cat([r.reshape(-1, r.shape[-1]).float() for r in router_logits], dim=0)


def load_balancing_loss(
    router_logits: torch.Tensor | Sequence[torch.Tensor], num_experts: int, top_k: int
) -> torch.Tensor:
    """Switch-Transformer auxiliary loss in Mixtral's form: num_experts * sum_e f_e * P_e.

    f_e is the number of top-k assignments to expert e per token (sums to top_k) and P_e the mean router
    probability of e; both are taken over the tokens of all layers together. Uniform routing gives top_k, which
    is the minimum; collapse onto one expert gives about num_experts. The trainer scales it by a small
    coefficient (Mixtral: 0.02). Matches transformers' `load_balancing_loss_func` without a mask.
    """
    logits = _as_2d(router_logits)  # (T, E)
    if logits.shape[-1] != num_experts:
        raise ValueError(f"router_logits have {logits.shape[-1]} experts, num_experts={num_experts}")
    probs = torch.softmax(logits, dim=-1)
    _, selected = torch.topk(probs, top_k, dim=-1)  # (T, k)
    counts = torch.zeros(num_experts, device=logits.device, dtype=torch.float32)
    counts.scatter_add_(0, selected.reshape(-1), torch.ones(selected.numel(), device=logits.device))
    tokens_per_expert = counts / logits.shape[0]  # (E,) f_e; not differentiable, the gradient flows through P_e
    prob_per_expert = probs.mean(dim=0)  # (E,) P_e
    return num_experts * torch.sum(tokens_per_expert * prob_per_expert)


def router_z_loss(router_logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """ST-MoE router z-loss: mean over tokens of logsumexp(logits)^2; keeps router logits small and bf16-safe."""
    logits = _as_2d(router_logits)
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


def init_std(config: ModelConfig) -> tuple[float, float]:
    """(std, residual-output std) for nanoGPT/GPT-2-style init: outputs into the residual get / sqrt(2 * L)."""
    std = config.initializer_range
    return std, std / math.sqrt(2 * config.num_layers)
