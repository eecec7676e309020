"""The layout's side of the training loop: the model laid out over the ranks, gradients synchronised, clipped and
gathered, whatever the layout (ParallelDims) is.

    replicated (one process, DDP)   the model as it is; DDP averages gradients (distributed.wrap_model/grad_sync)
    --expert-parallel N             experts sliced per rank (expert_parallel.py); after the backward, gradients are
                                    summed over the world (dense) or over the dp ranks with the same experts (experts)
                                    and divided by the world size: the mean over the global batch, as DDP's
    --fsdp                          fully_shard per block + root (fsdp.py), with the experts their own unit under EP

The loop calls the same methods for every layout, and a world of one keeps exactly its single-process arithmetic.
torch.distributed's DTensor, DeviceMesh and FSDP are imported only by sharded layouts (DTensor alone takes seconds).
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from llm.train.activation_checkpointing import apply_activation_checkpointing
from llm.train.distributed import DistInfo, grad_sync, wrap_model
from llm.train.expert_parallel import ExpertParallelExperts, apply_expert_parallel
from llm.train.parallel_dims import ParallelDims

BUCKET_NUMEL = 1 << 23  # gradients all-reduced per flat bucket of at most this many elements (32 MB in fp32)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor of a sharded layout (a DTensor's local shard, or the tensor itself)."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


class Parallelism:
    def __init__(self, dims: ParallelDims, info: DistInfo, bf16: bool):
        """dims: the checked layout; info: this rank (the process group exists when dims.sharded); bf16: the run
        computes in bf16 (autocast, or FSDP's bf16 parameters)."""
        self.dims, self.info, self.bf16 = dims, info, bf16
        self.experts: list[ExpertParallelExperts] = []
        self.expert_param_ids: set[int] = set()
        self.mesh = self.world_mesh = self.ep_dp_mesh = None
        if dims.sharded:
            from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

            kind = info.device.type
            self.mesh = init_device_mesh(kind, (dims.dp, dims.ep), mesh_dim_names=("dp", "ep"))
            self.world_mesh = init_device_mesh(kind, (dims.world_size,), mesh_dim_names=("world",))
            if dims.fsdp and dims.expert_parallel:
                # Checkpoints see an FSDP-sharded expert block as chunk (e, d) of the stacked experts: the ep index
                # first. The same ranks, dimensions swapped (rank d*ep + e sits at [e, d]).
                self.ep_dp_mesh = DeviceMesh(kind, self.mesh.mesh.t().contiguous(), mesh_dim_names=("ep", "dp"))

    # ---- set-up ---------------------------------------------------------------------------------------------------

    def parallelize(self, model: torch.nn.Module, activation_checkpointing: bool) -> None:
        """In place, on the full model every rank built from the same seed: expert slices, activation
        checkpointing, FSDP units (in that order: FSDP wraps what the others produced)."""
        dims = self.dims
        if dims.expert_parallel:
            group, ep_rank = self.mesh.get_group("ep"), self.mesh.get_local_rank("ep")
            self.experts = apply_expert_parallel(model, group, ep_rank, dims.ep)
        if activation_checkpointing:
            apply_activation_checkpointing(model)
        if dims.fsdp:
            from llm.train.fsdp import apply_fsdp, mixed_precision

            expert_mesh = self.mesh["dp"] if dims.expert_parallel else None
            apply_fsdp(model, self.world_mesh, mixed_precision(self.bf16), self.experts, expert_mesh)
        # FSDP replaces parameters: identify the experts' only now.
        self.expert_param_ids = {id(p) for m in self.experts for p in m.parameters()}

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast, unless FSDP already computes with bf16 parameters."""
        if self.bf16 and not self.dims.fsdp:
            return torch.autocast(self.info.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training forward runs through: DDP for a replicated world, else the model itself."""
        return model if self.dims.sharded else wrap_model(model, self.info)

    # ---- each step ------------------------------------------------------------------------------------------------

    def grad_sync(self, model: torch.nn.Module, last_micro_step: bool) -> contextlib.AbstractContextManager:
        """Around a micro-step: DDP's no_sync on all but the last; sharded layouts reduce in reduce_grads (expert
        parallel) or in every backward (FSDP: gradients are kept sharded)."""
        return contextlib.nullcontext() if self.dims.sharded else grad_sync(model, self.info, last_micro_step)

    def reshard(self, model: torch.nn.Module) -> None:
        """After forwards without a backward (evaluation, sampling): FSDP keeps the root's parameters gathered after
        its forward (the backward would need them at once); put the shards back, which the optimizer, checkpoints
        and the export address."""
        if self.dims.fsdp:
            model.reshard()

    def is_expert(self, p: torch.Tensor) -> bool:
        return id(p) in self.expert_param_ids

    def reduce_grads(self, model: torch.nn.Module) -> None:
        """After the last micro-step's backward, expert parallelism without FSDP: dense gradients summed over the
        world, expert gradients over the dp ranks holding the same experts (ep == world: none), all / world."""
        if not self.dims.expert_parallel or self.dims.fsdp:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:  # experts that received no token: every rank must send the same buffers
                p.grad = torch.zeros_like(p)
        dense = [p.grad for p in params if not self.is_expert(p)]
        expert = [p.grad for p in params if self.is_expert(p)]
        world = self.dims.world_size
        all_reduce_mean(dense, None, world)
        all_reduce_mean(expert, self.mesh.get_group("dp"), world)

    def replicas(self, p: torch.Tensor) -> int:
        """How many ranks hold this parameter's local values (sharded layouts)."""
        if self.dims.fsdp:
            return 1
        return self.dims.dp if self.is_expert(p) else self.dims.world_size

    def clip_grad_norm_(self, model: torch.nn.Module, max_norm: float) -> torch.Tensor:
        """Scale all gradients so their global norm is at most max_norm; returns the norm before clipping.
        Replicated layouts: torch's clip_grad_norm_. Sharded: each rank's squares, counted once over the world."""
        if not self.dims.sharded:
            return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        grads = [(p, local(p.grad)) for p in model.parameters() if p.grad is not None]
        total = torch.zeros((), dtype=torch.float64, device=self.info.device)
        for p, g in grads:
            total += g.double().pow(2).sum() / self.replicas(p)
        if dist.is_initialized():
            dist.all_reduce(total)
        norm = total.sqrt().float()
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)  # the formula of torch's clip_grad_norm_
        for _, g in grads:
            g.mul_(coef.to(g.dtype))
        return norm

    # ---- checkpoints and export -----------------------------------------------------------------------------------

    def global_view(self, p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """t (the parameter p itself, or optimizer state shaped like it) as a tensor of the full model's shape for
        torch.distributed.checkpoint: plain when replicated, a DTensor (sharing t's memory) when sharded."""
        t = t.detach()
        if not self.is_expert(p):
            return t  # replicated, or FSDP's own DTensor
        from torch.distributed.tensor import DTensor, Replicate, Shard

        E = self.experts[0].global_num_experts
        shape = torch.Size((E, *p.shape[1:]))
        stride = torch.empty(shape, device="meta").stride()
        if self.dims.fsdp:  # rank (d, e) holds chunk d of expert block e
            return DTensor.from_local(local(t), self.ep_dp_mesh, [Shard(0), Shard(0)], shape=shape, stride=stride)
        return DTensor.from_local(t, self.mesh, [Replicate(), Shard(0)], shape=shape, stride=stride)

    def full_tensor(self, p: torch.Tensor) -> torch.Tensor:
        """The whole parameter on every rank (a collective when sharded: every rank calls it, in the same order)."""
        from torch.distributed.tensor import DTensor

        t = p.detach()
        if isinstance(t, DTensor):
            t = t.full_tensor()  # FSDP: this rank's block (the experts of its ep index) or the whole parameter
        if self.is_expert(p):
            parts = [torch.empty_like(t) for _ in range(self.dims.ep)]
            dist.all_gather(parts, t.contiguous(), group=self.mesh.get_group("ep"))
            t = torch.cat(parts)
        return t

    def memory_report(self, model: torch.nn.Module) -> str:
        """Bytes per rank of parameters, gradients and AdamW state for this layout (the largest over the ranks).
        Every rank calls it (a collective when sharded)."""
        tensors = [local(p) if self.dims.sharded else p for p in model.parameters()]
        params = sum(t.numel() * t.element_size() for t in tensors)
        state = 2 * sum(t.numel() * 4 for t in tensors)  # exp_avg, exp_avg_sq in fp32
        sizes = torch.tensor([params, params, state], dtype=torch.float64, device=self.info.device)
        if dist.is_initialized() and self.dims.world_size > 1:
            dist.all_reduce(sizes, op=dist.ReduceOp.MAX)
        p_mb, g_mb, s_mb = (float(v) / 2**20 for v in sizes)
        gathered = " + one block's parameters gathered at a time" if self.dims.fsdp else ""
        return (
            f"memory per rank ({self.dims.describe()}): parameters {p_mb:.2f} MiB{gathered}, gradients "
            f"{g_mb:.2f} MiB, optimizer state {s_mb:.2f} MiB; {p_mb + g_mb + s_mb:.2f} MiB before activations"
        )


def all_reduce_mean(tensors: list[torch.Tensor], group: dist.ProcessGroup | None, divisor: int) -> None:
    """In place: sum over the group (None: the world; skipped for a group of one), then divide by divisor; flat
    buckets of at most BUCKET_NUMEL elements, so a model of many small tensors costs few collectives."""
    single = group is not None and dist.get_world_size(group) == 1
    buckets: list[list[torch.Tensor]] = []
    size = BUCKET_NUMEL
    for t in tensors:
        if size + t.numel() > BUCKET_NUMEL:
            buckets.append([])
            size = 0
        buckets[-1].append(t)
        size += t.numel()
    for bucket in buckets:
        flat = torch.cat([t.reshape(-1) for t in bucket])
        if not single:
            dist.all_reduce(flat, group=group)
        flat.div_(divisor)
        offset = 0
        for t in bucket:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
