"""The resumable state of a training run: OUT/checkpoint.pt, written atomically, read back bit for bit.

One file holds everything a resumed run needs to continue as if never stopped: model, optimizer, LR schedule, the
sampler's data position, the RNG states, the step/token/time counters, and the configs, tokenizer hash and shard key
it must be resumed with (checked before any step runs). torch.save goes through common.fs.atomic_write, so a kill
mid-write leaves the previous checkpoint.

The format is versioned (CHECKPOINT_FORMAT): a sharded checkpoint (one file per rank) would be a new format and a
new save/restore pair here, with the loop unchanged.
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
from llm.train.sampler import BatchSampler

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


def save_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sampler: BatchSampler,
    progress: Progress,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    tokenizer_hash: str,
    data_key: dict,
) -> None:
    """Write the run's state to path atomically (model: the unwrapped module, not its DDP wrapper)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": progress.step,
        "tokens": progress.tokens,
        "elapsed_s": progress.elapsed_s,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "sampler": sampler.state_dict(),
        "rng": rng_state(),
        "model_config": dataclasses.asdict(model_cfg),
        "train_config": cfg.to_dict(),
        "tokenizer_hash": tokenizer_hash,
        "data_key": data_key,
    }
    with atomic_write(path) as f:
        torch.save(state, f)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict, on the CPU (restore_checkpoint moves each part to its place)."""
    return torch.load(path, map_location="cpu", weights_only=False)


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
    path = out / CHECKPOINT
    if not cfg.resume:
        if path.exists():
            raise InvalidArgumentError(
                f"{out} already holds a training run ({CHECKPOINT}); pass --resume to continue it, or choose "
                "another --out"
            )
        return None
    if not path.exists():
        raise InvalidArgumentError(f"--resume: no {CHECKPOINT} in {out}")
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
) -> Progress:
    """Load a checkpoint's state into freshly built objects (and the RNGs); returns where the run stood."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    sampler.load_state_dict(ckpt["sampler"])
    set_rng_state(ckpt["rng"])
    return Progress(step=ckpt["step"], tokens=ckpt["tokens"], elapsed_s=ckpt["elapsed_s"])
