"""The resumable state of a training run, written atomically and read back bit for bit, in one of two forms:

- OUT/checkpoint.pt (one process, DDP): one file with everything a resumed run needs to continue as if never
  stopped: model, optimizer, LR schedule, the sampler's data position, the RNG states, the step/token/time
  counters, and the configs, tokenizer hash and shard key it must be resumed with (checked before any step runs).
  torch.save goes through common.fs.atomic_write, so a kill mid-write leaves the previous checkpoint.
- OUT/checkpoint/step-N/ (--fsdp, --expert-parallel): the same state, its tensors sharded by torch.distributed.
  checkpoint (sharded_checkpoint.py).

Either resumes any layout: a sharded checkpoint into one process, a checkpoint.pt into an expert-parallel mesh. A
run directory holds one of them; writing one removes the other once it is committed.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import InvalidArgumentError
from common.fs import atomic_write
from llm.config import ModelConfig
from llm.train.config import TrainConfig
from llm.train.parallelize import Parallelism
from llm.train.sampler import BatchSampler
from llm.train.sharded_checkpoint import (
    CHECKPOINT_DIR,
    groups_without_params,
    latest_sharded,
    load_sharded_state,
    remove_sharded,
    restore_tensors,
)

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1

# ModelConfig fields the tokenizer decides: a resumed run learns them only once the tokenizer is loaded.
TOKENIZER_FIELDS = frozenset({"vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"})


@dataclasses.dataclass
class Progress:
    """How far a run is: optimizer steps taken, tokens trained on, seconds spent in steps."""

    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_state(
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sampler: BatchSampler,
    progress: Progress,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    tokenizer_hash: str,
    data_key: dict,
) -> dict[str, Any]:
    """Everything but the tensors of the model and the optimizer."""
    return {
        "format": CHECKPOINT_FORMAT,
        "step": progress.step,
        "tokens": progress.tokens,
        "elapsed_s": progress.elapsed_s,
        "scheduler": scheduler.state_dict(),
        "sampler": sampler.state_dict(),
        "rng": rng_state(),
        "model_config": dataclasses.asdict(model_cfg),
        "train_config": cfg.to_dict(),
        "tokenizer_hash": tokenizer_hash,
        "data_key": data_key,
    }


def save_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, **state: Any) -> None:
    """Write the run's state to path atomically (model: the unwrapped module, not its DDP wrapper; state: the
    keyword arguments of run_state). A sharded checkpoint beside it, older by construction, is removed after."""
    full = {**run_state(**state), "model": model.state_dict(), "optimizer": optimizer.state_dict()}
    with atomic_write(path) as f:
        torch.save(full, f)
    remove_sharded(path.parent)


def sharded_run_state(optimizer: torch.optim.Optimizer, **state: Any) -> dict[str, Any]:
    """run_state plus the optimizer's hyper-parameters: the non-tensor part of a sharded checkpoint."""
    return {**run_state(**state), "optimizer_groups": groups_without_params(optimizer)}


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict, on the CPU (restore_checkpoint moves each part to its place). For a sharded checkpoint
    directory, its non-tensor state and the directory (the tensors are read by restore_checkpoint)."""
    if path.is_dir():
        return load_sharded_state(path)
    return torch.load(path, map_location="cpu", weights_only=False)


def find_checkpoint(out: Path) -> Path | None:
    """OUT/checkpoint.pt or the newest complete OUT/checkpoint/step-N/; both exist only after a kill between a
    commit and the removal of the other, and then the later step wins."""
    pt, sharded = out / CHECKPOINT, latest_sharded(out)
    if sharded is None or not pt.exists():
        return sharded or (pt if pt.exists() else None)
    return pt if load_checkpoint(pt)["step"] > load_sharded_state(sharded)["step"] else sharded


def check_resume_compatible(
    ckpt: dict[str, Any], model_cfg: ModelConfig, cfg: TrainConfig, path: Path, ignore: frozenset[str] = frozenset()
) -> None:
    """A checkpoint only resumes into the same model and sequence length (the data position counts sequences)."""
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InvalidArgumentError(
            f"{path}: checkpoint format {ckpt.get('format')!r}, this trainer reads {CHECKPOINT_FORMAT}"
        )
    now = dataclasses.asdict(model_cfg)
    diffs = [
        f"{k}: checkpoint {v!r} != now {now.get(k)!r}"
        for k, v in ckpt["model_config"].items()
        if k not in ignore and now.get(k) != v
    ]
    if diffs:
        raise InvalidArgumentError(
            f"cannot resume from {path}: the model config differs ({'; '.join(diffs)}); "
            "use the same --preset/--model/[model] settings, or a new --out"
        )
    if ckpt["train_config"]["seq_len"] != cfg.seq_len:
        raise InvalidArgumentError(
            f"cannot resume from {path}: seq_len {cfg.seq_len} != checkpoint's "
            f"{ckpt['train_config']['seq_len']} (the data position counts sequences of that length)"
        )


def checkpoint_to_resume(out: Path, cfg: TrainConfig, model_cfg: ModelConfig) -> dict[str, Any] | None:
    """The checkpoint a --resume run continues from (None without --resume), checked against everything known
    before the tokenizer is loaded; a run directory that already holds a checkpoint is refused without --resume."""
    path = find_checkpoint(out)
    if not cfg.resume:
        if path is not None:
            raise InvalidArgumentError(
                f"{out} already holds a training run ({path.relative_to(out)}); pass --resume to continue it, or "
                "choose another --out"
            )
        return None
    if path is None:
        raise InvalidArgumentError(f"--resume: no {CHECKPOINT} (nor a sharded {CHECKPOINT_DIR}/) in {out}")
    ckpt = load_checkpoint(path)
    # The vocabulary comes from the tokenizer (loaded later); everything else can be checked now.
    check_resume_compatible(ckpt, model_cfg, cfg, path, ignore=TOKENIZER_FIELDS)
    return ckpt


def check_resume_data(ckpt: dict[str, Any], tokenizer_hash: str, data_key: dict, out: Path) -> None:
    """The tokenizer and the shards must be the ones the checkpoint was trained on."""
    if ckpt["tokenizer_hash"] != tokenizer_hash:
        raise InvalidArgumentError(f"cannot resume: {out}/tokenizer.json changed since the checkpoint was written")
    if ckpt["data_key"] != data_key:
        raise InvalidArgumentError(
            "cannot resume: the corpus changed since the checkpoint (the saved data position would "
            "point into different shards); pass the same data, or start a new --out"
        )


def restore_checkpoint(
    ckpt: dict[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sampler: BatchSampler,
    par: Parallelism,
) -> Progress:
    """Load a checkpoint's state into freshly built objects (and the RNGs); returns where the run stood. model and
    optimizer are already laid out by par; a checkpoint of another layout is resharded."""
    if "model" in ckpt and not par.dims.sharded:  # checkpoint.pt into a replicated layout: as it was saved
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    else:
        restore_tensors(ckpt, model, optimizer, par)
    scheduler.load_state_dict(ckpt["scheduler"])
    sampler.load_state_dict(ckpt["sampler"])
    set_rng_state(ckpt["rng"])
    return Progress(step=ckpt["step"], tokens=ckpt["tokens"], elapsed_s=ckpt["elapsed_s"])
