"""The dense SwiGLU feed-forward: down(silu(gate(x)) * up(x)). It is the whole feed-forward of a dense layer
(Llama, Mistral, Qwen2/3; Qwen-MoE's mlp_only_layers) and Qwen2-MoE's shared expert; Hugging Face's names
(`gate_proj`, `up_proj`, `down_proj`), so checkpoints map one to one.

Every token goes through it, so it is a plain GEMM (nn.Linear: cuBLAS on a GPU), never the grouped expert kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., H) -> (..., H)."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    @torch.no_grad()
    def reset_parameters(self, std: float, out_std: float) -> None:
        nn.init.normal_(self.gate_proj.weight, std=std)
        nn.init.normal_(self.up_proj.weight, std=std)
        nn.init.normal_(self.down_proj.weight, std=out_std)
