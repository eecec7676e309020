"""The training loss's load-balancing term equals moe.load_balancing_loss on one process."""

from __future__ import annotations

import torch

from llm.config import get_config
from llm.moe import load_balancing_loss
from llm.train.distributed import DistInfo
from llm.train.loss import router_losses


def test_router_losses_match_moe_load_balancing_loss_on_one_process():
    torch.manual_seed(0)
    logits = [torch.randn(24, 4), torch.randn(24, 4)]
    aux, counts = router_losses(logits, get_config("tiny"), DistInfo())
    torch.testing.assert_close(aux, load_balancing_loss(logits, 4, 2))
    assert counts.shape == (2, 4) and counts.sum().item() == 2 * 24 * 2
