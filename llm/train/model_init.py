"""Which model a run trains, and what it starts from: a preset with --model overrides (random init), or an exported
model (--init-from) whose weights seed step 0 of a fine-tuning run.

Everything here reads only configs and the init model's files, so a bad preset, override or directory fails in
seconds, before any data work.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from common.errors import InvalidArgumentError
from llm.config import ModelConfig, get_config
from llm.train.config import TrainConfig

# ModelConfig fields that set parameter shapes (or tie them): an --init-from model keeps them. The others
# (max_position_embeddings, rope_theta, num_experts_per_tok, ...) may be overridden with --model.
SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "intermediate_size",
    "num_experts",
    "tie_word_embeddings",
)


def resolve_model_config(cfg: TrainConfig) -> tuple[ModelConfig, ModelConfig | None]:
    """(config of the model to train, config of the --init-from model or None).

    Without init_from: the preset (default small) with the --model overrides. With it: the init model's config
    with the --model overrides, which must keep every shape; a --preset must have the init model's shapes
    (vocab_size aside: a trained BPE may stop short of the preset's). InvalidArgumentError names the offending
    fields."""
    if not cfg.init_from:
        return get_config(cfg.preset or "small", **cfg.model), None
    if not os.path.isdir(cfg.init_from):
        raise InvalidArgumentError(
            f"--init-from {cfg.init_from!r} is not a directory (an exported model: config.json, "
            "model.safetensors, tokenizer.json)"
        )
    init_cfg = ModelConfig.load(cfg.init_from)
    if cfg.preset:
        preset = get_config(cfg.preset)
        diffs = [
            f"{k}: preset {getattr(preset, k)!r} != model {getattr(init_cfg, k)!r}"
            for k in SHAPE_FIELDS
            if k != "vocab_size" and getattr(preset, k) != getattr(init_cfg, k)
        ]
        if diffs:
            raise InvalidArgumentError(
                f"--preset {cfg.preset!r} does not match the --init-from model {cfg.init_from!r} "
                f"({'; '.join(diffs)}); drop --preset to use the model's own shapes"
            )
    diffs = [
        f"{k}={v!r} (model: {getattr(init_cfg, k)!r})"
        for k, v in cfg.model.items()
        if k in SHAPE_FIELDS and v != getattr(init_cfg, k)
    ]
    if diffs:
        raise InvalidArgumentError(
            f"--model {', '.join(diffs)} would change the shapes of the --init-from model's weights; "
            f"only {sorted(set(dataclasses.asdict(init_cfg)) - set(SHAPE_FIELDS))} may change"
        )
    return init_cfg.replace(**cfg.model), init_cfg


def load_init_state(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The --init-from model's weights (this module's state_dict names, CPU fp32), checked against its config,
    and its tokenizer's presence: read before any data work so a bad directory fails in seconds."""
    from llm.checkpoint import load_model

    if not cfg.tokenizer and not os.path.exists(os.path.join(cfg.init_from, "tokenizer.json")):
        raise InvalidArgumentError(f"--init-from {cfg.init_from!r} has no tokenizer.json; pass the model's --tokenizer")
    # float32 whatever the checkpoint or the CPU: these are the master weights the optimizer updates, and load_model's
    # "auto" would round them to bf16 on a CPU with avx512_bf16 / AMX.
    return load_model(cfg.init_from, dtype=torch.float32).state_dict()
