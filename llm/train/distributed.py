"""Distributed set-up for the trainer: which process this is, its device, and the few collectives the loop needs.

torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; a plain `python -m llm.train` is a world of one, and every helper here is
then a no-op, so the loop is written once for both. The replicated strategy (DDP: every rank holds the whole model
and gradients are averaged) is `wrap_model` with `grad_sync`; parallelize.Parallelism chooses it or a sharded
layout (FSDP, expert parallelism), and the loop asks only Parallelism.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import torch

from common.device import default_device
from common.errors import InvalidArgumentError


@dataclasses.dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """Rank 0 of a torchrun job (or the only process), before or after the group exists."""
    return int(os.environ.get("RANK", "0")) == 0


def setup_distributed(device: str = "auto", group_of_one: bool = False) -> DistInfo:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: join the group (NCCL on CUDA, gloo on CPU), one device per rank.

    device: TrainConfig.device ("auto": CUDA when there is one). group_of_one: a world of one gets a process group
    too (an in-memory store, no torchrun needed): FSDP lays a model out over a device mesh even on one rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise InvalidArgumentError(f"device={device!r} but CUDA is not available")
    if world <= 1:
        info = DistInfo(device=default_device() if device == "auto" else torch.device(device))
        if group_of_one:
            import torch.distributed as dist

            if info.device.type == "cuda" and info.device.index is not None:
                torch.cuda.set_device(info.device)
            backend = "nccl" if info.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        return info
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    dist.init_process_group(
        backend="nccl" if want_cuda else "gloo",
        rank=rank,
        world_size=world,
        **({"device_id": dev} if want_cuda else {}),
    )
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=dev)


def teardown_distributed(info: DistInfo, group_of_one: bool = False) -> None:
    if info.enabled or group_of_one:
        import torch.distributed as dist

        dist.destroy_process_group()


@contextlib.contextmanager
def distributed(device: str = "auto", group_of_one: bool = False) -> Iterator[DistInfo]:
    """setup_distributed, and leave the process group however the block ends."""
    info = setup_distributed(device, group_of_one)
    try:
        yield info
    finally:
        teardown_distributed(info, group_of_one)


def all_reduce(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum t over the ranks, in place; returns t."""
    if info.enabled:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def broadcast_from_main(obj: Any, info: DistInfo) -> Any:
    """Rank 0's obj on every rank (a picklable object, e.g. rank 0's error message)."""
    if not info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def wrap_model(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """The module the training forward runs through: DDP over ranks (it also broadcasts rank 0's weights), or the
    model itself in a world of one."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)


def grad_sync(model: torch.nn.Module, info: DistInfo, last_micro_step: bool) -> contextlib.AbstractContextManager:
    """Around a micro-step's forward and backward: DDP all-reduces gradients once per optimizer step, on its last
    micro-step; the others accumulate locally (no_sync)."""
    if not info.enabled or last_micro_step:
        return contextlib.nullcontext()
    return model.no_sync()
