"""The training loss of one micro-batch: cross-entropy + aux_loss_coef * load balancing + z_loss_coef * router z-loss.

The load-balancing loss takes its expert counts f_e over the global micro-batch (all-reduced across DDP ranks) and
its router probabilities P_e over the local tokens: DDP's gradient average then equals the gradient of the
single-process loss on the whole batch, so 1 process and N processes with the same global batch train the same
model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llm.config import ModelConfig
from llm.model import cross_entropy_loss
from llm.moe import router_z_loss
from llm.train.config import TrainConfig
from llm.train.distributed import DistInfo, all_reduce


def router_losses(
    router_logits: list[torch.Tensor], config: ModelConfig, info: DistInfo
) -> tuple[torch.Tensor, torch.Tensor]:
    """(load-balancing loss, per-layer assignment counts (L, E)) of one micro-batch.

    Same value as moe.load_balancing_loss on the global micro-batch: num_experts * sum_e f_e * P_e with f_e (top-k
    assignments per token) all-reduced over ranks and P_e (mean router probability) local; see the module doc."""
    E, k = config.num_experts, config.num_experts_per_tok
    logits = torch.stack([r.float() for r in router_logits])  # (L, N, E)
    probs = torch.softmax(logits, dim=-1)
    selected = torch.topk(probs, k, dim=-1).indices  # (L, N, k)
    with torch.no_grad():
        counts = F.one_hot(selected, E).sum(dim=(1, 2)).float()  # (L, E) assignments per layer and expert
        global_counts = all_reduce(counts.clone(), info)
        tokens = logits.shape[0] * logits.shape[1] * info.world_size  # all layers' tokens, all ranks
        f = global_counts.sum(0) / tokens  # (E,) sums to k
    P = probs.reshape(-1, E).mean(0)  # (E,)
    return E * torch.sum(f * P), global_counts


@dataclass
class MicroLoss:
    loss: torch.Tensor  # what backward() runs on (before the 1/grad_accum scaling)
    ce: torch.Tensor
    aux: torch.Tensor
    z: torch.Tensor | None  # router z-loss, when z_loss_coef > 0
    counts: torch.Tensor  # (L, E) expert assignments over the global micro-batch


def micro_batch_loss(
    logits: torch.Tensor,
    router_logits: list[torch.Tensor],
    y: torch.Tensor,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    info: DistInfo,
) -> MicroLoss:
    """logits (B, T, V), router_logits [(B*T, E)] * L, targets y (B, T) -> the loss and its parts."""
    ce = cross_entropy_loss(logits, y)
    aux, counts = router_losses(router_logits, model_cfg, info)
    use_aux = model_cfg.num_experts > 1 and cfg.aux_loss_coef > 0
    loss = ce + (cfg.aux_loss_coef * aux if use_aux else 0.0)
    z = None
    if cfg.z_loss_coef > 0:
        z = router_z_loss(router_logits)
        loss = loss + cfg.z_loss_coef * z
    return MicroLoss(loss, ce, aux, z, counts)
