"""Activation checkpointing: each decoder block keeps only its input in the forward and recomputes the rest in the
backward (torch.utils.checkpoint, non-reentrant), trading one more forward per block for the activations' memory.

Applied from outside the model, before FSDP wraps the blocks: the block's forward is replaced on the instance, so
parameter names (checkpoints, the export) are unchanged. The recomputation is deterministic, so the losses equal a
run without it; with expert parallelism the recomputed forward repeats its all-to-alls, on every rank alike.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint


def apply_activation_checkpointing(model: torch.nn.Module) -> None:
    """In place: every block of model.model.layers recomputes its activations in the backward."""
    for layer in model.model.layers:
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)
