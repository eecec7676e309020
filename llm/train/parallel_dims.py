"""How a run lays the model out over torchrun's processes: the sizes of the dp x ep mesh, FSDP or not, checked
before any work.

    world = dp x ep ranks, ranks r = d * ep + e (an expert-parallel group is ep consecutive ranks: one node's GPUs)

    attention, norms, embeddings, router   data-parallel over all dp x ep ranks (replicated, or FSDP-sharded)
    routed experts of each MoE layer       rank (d, e) holds experts e*E/ep ... (e+1)*E/ep - 1; tokens reach them by
                                           all-to-all inside the ep group; gradients are reduced over the dp ranks
                                           holding the same experts (and FSDP-sharded over them with --fsdp)

Every rank takes batch_size / world sequences of each global batch, so every layout trains the same model as one
process. Only what needs no process group is here; the meshes are built by parallelize.Parallelism.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from common.errors import InvalidArgumentError
from llm.config import ModelConfig
from llm.train.config import TrainConfig


@dataclass(frozen=True)
class ParallelDims:
    world_size: int = 1
    ep: int = 1  # ranks per expert-parallel group
    fsdp: bool = False

    @property
    def dp(self) -> int:
        """Replicas of each expert (the mesh's other dimension)."""
        return self.world_size // self.ep

    @property
    def expert_parallel(self) -> bool:
        return self.ep > 1

    @property
    def sharded(self) -> bool:
        """Ranks hold different parameters: every forward is a collective, checkpoints are sharded."""
        return self.fsdp or self.expert_parallel

    def describe(self) -> str:
        """e.g. "1 process", "2 processes, DDP", "4 processes, dp 2 x ep 2, FSDP"."""
        parts = [f"{self.world_size} process{'es' if self.world_size > 1 else ''}"]
        if self.expert_parallel:
            parts.append(f"dp {self.dp} x ep {self.ep}")
        if self.fsdp:
            parts.append("FSDP")
        elif self.world_size > 1 and not self.expert_parallel:
            parts.append("DDP")
        return ", ".join(parts)


def world_size_from_env() -> int:
    """The number of processes torchrun started (1 for a plain `python -m llm.train`)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def plan_parallel_dims(cfg: TrainConfig, model_cfg: ModelConfig, world_size: int) -> ParallelDims:
    """The run's layout; InvalidArgumentError before any work when the options and the world don't fit."""
    ep = cfg.expert_parallel
    if world_size % ep:
        raise InvalidArgumentError(
            f"the world size {world_size} does not factor into the dp x ep mesh with --expert-parallel {ep}: "
            f"launch a multiple of {ep} processes (torchrun --nproc_per_node), or change --expert-parallel"
        )
    if model_cfg.num_experts % ep:
        raise InvalidArgumentError(
            f"num_experts={model_cfg.num_experts} is not divisible by --expert-parallel {ep}: every rank of an "
            "expert-parallel group holds num_experts / N experts of each MoE layer"
        )
    dims = ParallelDims(world_size=world_size, ep=ep, fsdp=cfg.fsdp)
    if dims.sharded and cfg.compile:
        what = "--fsdp" if cfg.fsdp else "--expert-parallel"
        raise InvalidArgumentError(
            f"{what} cannot be combined with --compile: this trainer compiles the whole model, which is not set "
            "up for FSDP's hooks or the experts' all-to-alls; drop --compile"
        )
    if cfg.batch_size % world_size:
        raise InvalidArgumentError(f"batch_size={cfg.batch_size} is not divisible by the world size {world_size}")
    return dims
