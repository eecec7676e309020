"""FSDP2 (`torch.distributed.fsdp.fully_shard`): parameters, gradients and optimizer state sharded on dim 0 over the
data-parallel ranks, one unit per decoder block plus the root (embeddings, final norm, head), as torchtitan does.

A block's parameters are all-gathered just before its forward (and again before its backward) and freed after;
gradients are reduce-scattered as each block's backward ends. On CUDA the gathered parameters are bf16 and the
reduction runs in float32 (MixedPrecisionPolicy); the sharded parameters the optimizer updates stay float32.

With expert parallelism the routed experts form their own unit, sharded over the dp ranks that hold the same
experts (the mesh's "dp" dimension), while the rest of the block is sharded over all ranks. Their gradient sums the
tokens of the whole ep group, so it is divided by the world size (not by dp) to stay the mean over the global batch.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def mixed_precision(bf16: bool) -> MixedPrecisionPolicy:
    """bf16 parameters in compute with float32 gradient reduction, or plain float32."""
    if bf16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def apply_fsdp(
    model: torch.nn.Module,
    world_mesh: DeviceMesh,
    mp_policy: MixedPrecisionPolicy,
    experts: list[torch.nn.Module] = (),
    expert_mesh: DeviceMesh | None = None,
) -> None:
    """In place: fully_shard each expert-parallel experts module over expert_mesh, each block and the root over
    world_mesh (inner units first: a parameter belongs to the innermost unit that holds it)."""
    world = world_mesh.size()
    for module in experts:
        fully_shard(module, mesh=expert_mesh, mp_policy=mp_policy)
        module.set_gradient_divide_factor(float(world))
        if expert_mesh.size() > 1:
            # gloo has no pre-multiplied sum (NCCL only loses a fused division). NOTE: not on a mesh of one, where
            # torch 2.13 would divide twice (its copy in place of a reduce-scatter divides, then the post-divide).
            module.set_force_sum_reduction_for_comms(True)
        # A rank whose experts got no token this micro-step has no gradient for them; reduce zeros instead, so the
        # reduce-scatter is the same collective on every rank.
        module.set_reduce_scatter_unused_params(True)
    for layer in model.model.layers:
        fully_shard(layer, mesh=world_mesh, mp_policy=mp_policy)
    fully_shard(model, mesh=world_mesh, mp_policy=mp_policy)
