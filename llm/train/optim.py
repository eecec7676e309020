"""The optimizer and its schedule: AdamW over two parameter groups, linear warm-up then cosine decay."""

from __future__ import annotations

import math
from typing import Any

import torch

from llm.train.config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (attention, experts, router, an untied head); not norms, biases or embeddings: decaying
    rare tokens' embeddings towards 0 only because they are rarely seen hurts them (nanoGPT, Llama recipes)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # a tied weight is yielded once, under embed_tokens
        if not p.requires_grad:
            continue
        if p.dim() < 2 or "embed_tokens" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr for 0-based optimizer step `step`: linear warm-up, then cosine to min_lr_ratio."""
    # 1) linear warm-up
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    # 2) cosine from 1 down to min_lr_ratio at lr_decay_steps, 3) then flat
    decay_steps = cfg.lr_decay_steps or cfg.max_steps
    progress = min(max(step - cfg.warmup_steps, 0) / max(decay_steps - cfg.warmup_steps, 1), 1.0)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (fused on CUDA) and the LambdaLR that applies lr_factor after every optimizer step."""
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda"
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    return optimizer, scheduler


def set_lr_for_step(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, step: int, cfg: TrainConfig
) -> None:
    """After a resume: the next step's lr under this run's schedule (max_steps / lr_decay_steps may have been raised
    to extend the run); the same value LambdaLR computes, so an unchanged schedule resumes bit for bit."""
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * lr_factor(step, cfg)
