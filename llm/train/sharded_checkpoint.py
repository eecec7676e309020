"""Sharded checkpoints (--fsdp, --expert-parallel): OUT/checkpoint/step-NNNNNNNN/, written by every rank through
torch.distributed.checkpoint (DCP), resumable by any layout: one process, DDP, FSDP or another dp x ep mesh.

    checkpoint/step-00000008/
        .metadata, __0_0.distcp, __1_0.distcp, ...   model and AdamW state, each tensor by its name and global shape
        train_state.pt                                rank 0: schedule, data position, RNGs, configs (written last)

Every tensor is saved as a piece of the full model's tensor (parallelize.Parallelism.global_view: a DTensor when
sharded), so DCP records where each rank's piece sits and a load into another layout reads exactly its own piece.
The optimizer state is keyed by parameter name, not by position, for the same reason. (DCP and DTensor are imported
when used: a replicated run never needs them.)

Atomicity: a step directory is complete once train_state.pt exists; it is written (common.fs.atomic_write) only
after every rank's DCP files and DCP's .metadata are on disk (fsync'd). A kill before that leaves an incomplete
directory that resume ignores and the next save removes; after the commit, older checkpoints (and a checkpoint.pt
this run resumed from) are deleted.
"""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from common.fs import atomic_write, fsync_path
from llm.train.distributed import DistInfo, barrier
from llm.train.parallelize import Parallelism

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "train_state.pt"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir(out: Path, step: int) -> Path:
    return out / CHECKPOINT_DIR / f"step-{step:08d}"


def latest_sharded(out: Path) -> Path | None:
    """The newest complete step directory of OUT/checkpoint/, or None."""
    root = out / CHECKPOINT_DIR
    if not root.is_dir():
        return None
    done = [d for d in root.iterdir() if _STEP_DIR.match(d.name) and (d / STATE_FILE).exists()]
    return max(done, key=lambda d: d.name, default=None)


def load_sharded_state(directory: Path) -> dict[str, Any]:
    """The non-tensor part (train_state.pt); the tensors are read later by restore_tensors, on every rank."""
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)
    state["sharded_dir"] = str(directory)
    return state


# ---- the tensors, by name ---------------------------------------------------------------------------------------


def optimizer_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The parameter names in the optimizer's order (the integer keys of optimizer.state_dict())."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create AdamW's state tensors (lazily made by the first step) so a checkpoint can be loaded into them: one
    step with zero gradients and lr 0, which leaves every parameter as it is (torch's own DCP helpers do the same)."""
    lrs = [g["lr"] for g in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr


def tensor_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, par: Parallelism) -> dict[str, Any]:
    """{"model": {name: tensor}, "optim": {name: {exp_avg, exp_avg_sq, step}}} as pieces of the full model's
    tensors (sharing this rank's memory: a DCP load writes straight into the model and the optimizer)."""
    params = dict(model.named_parameters())
    optim = {}
    for name, p in params.items():
        # Every parameter has its AdamW state once a step ran (init_optimizer_state before a load); a parameter
        # object the optimizer does not know (FSDP's gathered root after a forward without backward) is a bug.
        assert p in optimizer.state, f"{name}: not the parameter the optimizer updates"
        state = optimizer.state[p]
        optim[name] = {k: par.global_view(p, v) if v.dim() else v for k, v in state.items()}  # step: a scalar
    return {"model": {n: par.global_view(p, p) for n, p in params.items()}, "optim": optim}


def groups_without_params(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.state_dict()["param_groups"]]


def set_group_options(optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> None:
    """The saved hyper-parameters of each group (lr, betas, weight decay, initial_lr), params kept."""
    assert len(groups) == len(optimizer.param_groups), (len(groups), len(optimizer.param_groups))
    for group, saved in zip(optimizer.param_groups, groups):
        group.update({k: v for k, v in saved.items() if k != "params"})


def restore_tensors(
    ckpt: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, par: Parallelism
) -> None:
    """Model and optimizer tensors from any checkpoint into any layout: a sharded directory through DCP, or a
    checkpoint.pt (full tensors, optimizer state by position) sliced to this rank's pieces."""
    import torch.distributed.checkpoint as dcp

    init_optimizer_state(optimizer)
    target = tensor_state(model, optimizer, par)
    if "sharded_dir" in ckpt:
        with warnings.catch_warnings():  # one process reading a sharded checkpoint is what we mean
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp.load(target, checkpoint_id=ckpt["sharded_dir"], no_dist=not dist.is_initialized())
        set_group_options(optimizer, ckpt["optimizer_groups"])
        return
    names = optimizer_names(model, optimizer)
    saved = ckpt["optimizer"]
    full = {
        "model": {n: ckpt["model"][n] for n in target["model"]},
        "optim": {names[i]: s for i, s in saved["state"].items()},
    }
    with torch.no_grad():
        for name, t in target["model"].items():
            copy_piece(full["model"][name], t)
        for name, state in target["optim"].items():
            for k, t in state.items():
                copy_piece(full["optim"][name][k], t)
    set_group_options(optimizer, saved["param_groups"])


def copy_piece(full: torch.Tensor, dst: torch.Tensor) -> None:
    """dst (a plain tensor, or this rank's piece of a DTensor) <- the matching part of the full tensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(dst, DTensor):
        piece = distribute_tensor(full.to(dst.device), dst.device_mesh, dst.placements, src_data_rank=None)
        dst.to_local().copy_(piece.to_local())
    else:
        dst.copy_(full)


# ---- writing ----------------------------------------------------------------------------------------------------


def save_sharded(out: Path, step: int, tensors: dict[str, Any], state: dict[str, Any], info: DistInfo) -> None:
    """Every rank: write step `step`'s directory, commit it (rank 0's train_state.pt), then drop older step
    directories; every rank returns after the commit."""
    import torch.distributed.checkpoint as dcp

    directory = step_dir(out, step)
    if info.is_main:
        shutil.rmtree(directory, ignore_errors=True)  # an incomplete attempt at this step
        directory.mkdir(parents=True)
        fsync_path(directory.parent)
    barrier(info)
    writer = dcp.FileSystemWriter(directory, sync_files=True)
    dcp.save(tensors, storage_writer=writer, no_dist=not dist.is_initialized())  # returns once .metadata is written
    if info.is_main:
        with atomic_write(directory / STATE_FILE) as f:  # the commit
            torch.save(state, f)
        for old in (out / CHECKPOINT_DIR).iterdir():
            if old != directory:
                shutil.rmtree(old, ignore_errors=True)
    barrier(info)


def remove_sharded(out: Path) -> None:
    """After a checkpoint.pt commit: the sharded checkpoint the run resumed from is older."""
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
