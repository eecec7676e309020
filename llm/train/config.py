"""Training configuration: one dataclass with laptop-CPU defaults, read from TOML and overridden by the CLI.

    # train.toml: top-level keys are TrainConfig fields; [model] overrides fields of the ModelConfig preset
    preset = "small"
    seq_len = 256
    max_steps = 2000
    lr = 1e-3
    [model]
    num_layers = 6

Unknown keys are errors that name the key (and the closest valid one): a typo like `warmup_step = 100` must not
silently train with the default. Every default lives here, and `validate` checks every value once, before any work.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from common.checks import non_negative_int, positive_int
from common.errors import InvalidArgumentError
from llm.config import ModelConfig


@dataclass
class TrainConfig:
    # ---- data ----
    data: list[str] = field(default_factory=list)  # files/folders of .txt/.md/.jsonl ("text" field)/.json/.html
    from_collection: str | None = None  # or: the documents of a pqrag collection ...
    data_dir: str = "data"  # ... in this pqrag data directory (read-only)
    pydoc: bool = False  # or/and: Python's own docs (pydoc_data topics + stdlib docstrings)
    out: str = "out/train"  # checkpoint.pt, metrics.jsonl, loss.png, data/ shards and the exported model
    tokenizer: str | None = None  # tokenizer.json (or its directory) to reuse; None trains a byte-level BPE
    vocab_size: int | None = None  # BPE vocabulary to train; None = the preset's vocab_size
    val_fraction: float = 0.05  # share of documents held out for validation
    # ---- model ----
    # llm.config preset: tiny (tests), small (the demo generator, ~20 MB fp32); None = small, or with init_from
    # the shapes of that model (a preset given with init_from must describe the same shapes)
    preset: str | None = None
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig field overrides ([model] table, --model k=v)
    # Fine-tuning: start from this exported model directory (config.json + model.safetensors + tokenizer.json)
    # with a fresh optimizer, schedule and step 0; its tokenizer is reused unless `tokenizer` names another one
    # of the same size. --model may change only fields that keep the weights' shapes.
    init_from: str | None = None
    # ---- batch: tokens per optimizer step = batch_size * grad_accum * seq_len ----
    # Chat records ({"messages": [...]}) train on the assistant's turns only, the prompt being context (SFT's
    # usual choice); True trains on every token of them. Plain text always trains on every token.
    train_on_prompt: bool = False
    seq_len: int = 256  # tokens per training sequence (<= model max_position_embeddings)
    batch_size: int = 8  # sequences per micro-step, all ranks together (divisible by the world size)
    grad_accum: int = 1  # micro-steps per optimizer step
    max_steps: int = 1000  # optimizer steps to train to (a resumed run continues up to this)
    # ---- optimizer and schedule ----
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50  # linear warm-up from 0
    lr_decay_steps: int | None = None  # end of the cosine; None = max_steps (set it to resume past max_steps)
    weight_decay: float = 0.1  # AdamW decay of matrices; norms, biases and embeddings get none
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    aux_loss_coef: float = 0.02  # load-balancing loss weight (Mixtral: 0.02); unused for dense models
    z_loss_coef: float = 0.0  # router z-loss weight (ST-MoE: 1e-3); 0 disables
    # ---- evaluation, logging, checkpoints ----
    eval_interval: int = 100  # steps between val-loss evaluations (and at the last step)
    eval_batches: int = 8  # val batches (of batch_size sequences) per evaluation; the same ones every time
    sample_tokens: int = 32  # greedy sample length shown at each evaluation; 0 disables
    sample_prompt: str = "The"
    checkpoint_interval: int = 100  # steps between checkpoints (and at the last step)
    # ---- parallelism over torchrun's processes (one process alone trains the same model) ----
    # FSDP2: parameters, gradients and optimizer state sharded over the ranks, one unit per block plus the root;
    # on CUDA bf16 parameters in compute and float32 gradient reduction
    fsdp: bool = False
    # ranks per expert-parallel group: each holds num_experts / expert_parallel experts of every MoE layer and
    # routed tokens travel to their expert's rank (all-to-all); the world is a dp x ep mesh, ep = this
    expert_parallel: int = 1
    activation_checkpointing: bool = False  # recompute each block's activations in the backward (less memory)
    # ---- system ----
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:1
    dtype: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; or fp32 / bf16
    compile: bool = False  # torch.compile the model (CUDA: faster after a warm-up; CPU: rarely worth it)
    threads: int = 0  # torch.set_num_threads; 0 keeps torch's default
    seed: int = 1337  # model init and data order
    resume: bool = False  # continue from out/checkpoint.pt
    quiet: bool = False  # no progress bar

    def validate(self) -> None:
        """InvalidArgumentError (a ValueError) naming the first bad value."""
        positive = (
            "seq_len",
            "batch_size",
            "grad_accum",
            "max_steps",
            "eval_interval",
            "eval_batches",
            "checkpoint_interval",
            "expert_parallel",
        )
        for name in positive:
            positive_int(getattr(self, name), name)
        non_negative_int(self.threads, "threads")
        if not 0.0 < self.val_fraction < 1.0:
            raise InvalidArgumentError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise InvalidArgumentError(
                f"need lr > 0 and 0 <= min_lr_ratio <= 1, got lr={self.lr}, min_lr_ratio={self.min_lr_ratio}"
            )
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.aux_loss_coef < 0 or self.z_loss_coef < 0:
            raise InvalidArgumentError("warmup_steps, grad_clip, aux_loss_coef and z_loss_coef must be >= 0")
        if self.init_from and self.vocab_size:
            raise InvalidArgumentError(
                "vocab_size trains a new tokenizer, but an init_from model keeps its vocabulary; "
                "drop vocab_size (or pass a tokenizer of the same size)"
            )
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise InvalidArgumentError(f"dtype must be auto, fp32 or bf16, got {self.dtype!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise InvalidArgumentError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}") from None
        model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
        for key in self.model:
            if key not in model_fields:
                raise InvalidArgumentError(f"unknown model field {key!r}{_suggest(key, model_fields)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _suggest(key: str, valid: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _check_type(key: str, value: Any, default: Any) -> Any:
    """TOML types against the dataclass default's (None defaults accept anything; ints are accepted as floats)."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise InvalidArgumentError(f"{key} must be of type {type(default).__name__}, got {value!r}")
    return value


def config_from_dict(d: dict[str, Any], where: str = "config") -> TrainConfig:
    """A TrainConfig from a dict (a parsed TOML file); unknown keys raise InvalidArgumentError naming them."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    defaults = TrainConfig()
    kwargs = {}
    for key, value in d.items():
        if key not in fields:
            raise InvalidArgumentError(f"{where}: unknown key {key!r}{_suggest(key, set(fields))}")
        kwargs[key] = _check_type(f"{where}: {key}", value, getattr(defaults, key))
    cfg = TrainConfig(**kwargs)
    try:
        cfg.validate()
    except ValueError as exc:
        raise InvalidArgumentError(f"{where}: {exc}") from None
    return cfg


def load_toml(path: str | os.PathLike) -> TrainConfig:
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InvalidArgumentError(f"config file {path!r} does not exist")
    with open(path, "rb") as f:
        try:
            d = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgumentError(f"{path}: invalid TOML: {exc}") from None
    return config_from_dict(d, where=path)


def demo_config(out: str = "out/pydoc", max_steps: int = 1000, **overrides: Any) -> TrainConfig:
    """The default demo generator: preset "small" (4 experts top-2, 4.99M params -> a 20 MB fp32 model.safetensors,
    under the 30 MB budget) on Python's docs (pydoc_data topics + stdlib docstrings, ~0.53M train tokens with the
    4096-token BPE). 1000 steps x 2048 tokens is ~3.9 epochs. Same as
        python -m llm.train --pydoc --preset small --out out/pydoc --max-steps 1000
    Measured on the 2-core dev VM: ~1,850 tokens/s with 1 thread on a loaded machine (1.1 s/step, ~19 min per
    1000 steps) and ~2,800 tokens/s for a bare step on 2 idle cores (~13 min); data prep adds ~30 s once."""
    cfg = TrainConfig(pydoc=True, preset="small", out=out, max_steps=max_steps, sample_prompt="The", **overrides)
    cfg.validate()
    return cfg
