"""Expert parallelism, added from outside the model (a module swap, as gpt-fast and torchtitan do): each MoE layer's
`experts` module (llm.moe.MoEExperts) is replaced by this rank's slice of it, whose forward sends every routed token
to the rank owning its expert and brings the result back.

    # T = tokens on this rank, k = experts per token, E = experts, P = ranks in the ep group, El = E / P local experts
    # H = hidden size, M = assignments this rank's experts receive from the whole group

    router + top-k          unchanged (llm.moe.SparseMoeBlock.route, on this rank's tokens)
    sort by expert          (T*k, H), grouped by expert, hence by owner rank (rank r owns experts r*El ... r*El+El-1)
    all-to-all counts       (E,) -> (P, El): how many rows each rank sends to each of my experts
    all-to-all hidden       (T*k, H) -> (M, H), ordered by source rank, then expert
    local experts           MoEExperts' grouped path over the El local experts
    all-to-all back         (M, H) -> (T*k, H), in the sorted order again
    weight and sum          * topk_weights, index_add_ into (T, H): exactly MoEExperts' combine

The backward of each hidden-state all-to-all is the reverse all-to-all (the splits swapped). The parameters keep
their names (`...block_sparse_moe.experts.w1`, stacked on dim 0), so checkpoints and the export see one layout.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from llm.moe import MoEExperts, SparseMoeBlock


class AllToAll(torch.autograd.Function):
    """dist.all_to_all_single with uneven splits along dim 0; the backward sends the gradients back the same way."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, output_splits: list[int], input_splits: list[int], group) -> torch.Tensor:
        ctx.splits, ctx.group = (output_splits, input_splits), group
        out = x.new_empty((sum(output_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), output_splits, input_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        output_splits, input_splits = ctx.splits
        out = grad.new_empty((sum(input_splits), *grad.shape[1:]))
        dist.all_to_all_single(out, grad.contiguous(), input_splits, output_splits, group=ctx.group)
        return out, None, None, None


def all_to_all(x: torch.Tensor, output_splits: list[int], input_splits: list[int], group) -> torch.Tensor:
    """Differentiable all-to-all: rows x[sum(input_splits[:r]) ...] go to rank r; returns the rows received."""
    return AllToAll.apply(x, output_splits, input_splits, group)


class ExpertParallelExperts(MoEExperts):
    """This rank's El = E / P experts of one MoE layer, with MoEExperts' interface: forward(x (T, H), topk_ids
    (T, k) global expert ids, topk_weights (T, k)) -> (T, H). Every rank of the group must call it together."""

    def __init__(self, experts: MoEExperts, group: dist.ProcessGroup, ep_rank: int, ep_size: int):
        E = experts.num_experts
        assert E % ep_size == 0, (E, ep_size)
        El = E // ep_size
        _, intermediate, hidden = experts.w1.shape
        with torch.device(experts.w1.device):
            super().__init__(El, hidden, intermediate)
        self.global_num_experts, self.first_expert = E, ep_rank * El
        self.group, self.ep_size = group, ep_size
        with torch.no_grad():
            for name, p in self.named_parameters(recurse=False):
                p.copy_(getattr(experts, name)[self.first_expert : self.first_expert + El])

    def forward(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        P, El, k = self.ep_size, self.num_experts, topk_ids.shape[1]
        flat_ids = topk_ids.reshape(-1)  # (T*k,)
        order = torch.argsort(flat_ids, stable=True)  # grouped by expert, so by owner rank, token order kept
        token_idx = order // k  # (T*k,) source token of each sorted assignment
        send_counts = torch.bincount(flat_ids, minlength=self.global_num_experts)  # (E,) = (P, El) flattened
        recv_counts = torch.empty_like(send_counts)  # (P*El,): row s = what rank s sends to each local expert
        dist.all_to_all_single(recv_counts, send_counts, group=self.group)
        # One host sync for both split lists (the all-to-all sizes need Python ints).
        send_splits, recv_splits = torch.stack(
            [send_counts.view(P, El).sum(1), recv_counts.view(P, El).sum(1)]
        ).tolist()
        recv = all_to_all(x.index_select(0, token_idx), recv_splits, send_splits, self.group)  # (M, H)
        local_ids = torch.arange(El, device=x.device).repeat(P).repeat_interleave(recv_counts)  # (M,)
        if recv.shape[0]:
            ys = super().forward(recv, local_ids[:, None], recv.new_ones(recv.shape[0], 1))  # grouped local experts
        else:
            # No token for my experts: the empty result must still depend on recv, so that this rank's backward
            # runs both all-to-alls as the other ranks' do (a collective that one rank skips hangs the group).
            ys = recv
        back = all_to_all(ys, send_splits, recv_splits, self.group)  # (T*k, H), sorted order
        back = back * topk_weights.reshape(-1, 1)[order].to(back.dtype)
        return torch.zeros_like(x).index_add_(0, token_idx, back)


def apply_expert_parallel(
    model: torch.nn.Module, group: dist.ProcessGroup, ep_rank: int, ep_size: int
) -> list[ExpertParallelExperts]:
    """In place: every MoE layer's experts become this rank's slice (from the full, identically initialised model
    every rank built). Returns the new modules."""
    swapped = []
    for block in model.modules():
        if isinstance(block, SparseMoeBlock):
            block.experts = ExpertParallelExperts(block.experts, group, ep_rank, ep_size)
            swapped.append(block.experts)
    return swapped


def is_expert_parallel(module: torch.nn.Module) -> bool:
    return isinstance(module, ExpertParallelExperts)
