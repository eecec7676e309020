"""Progress checks during training: validation loss over a fixed set of val sequences, and a short greedy sample."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from llm.model import CausalLM, cross_entropy_sum
from llm.tokenizer import Tokenizer
from llm.train.config import TrainConfig
from llm.train.distributed import DistInfo, all_reduce, broadcast_from_main
from llm.train.shards import Shards


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    shards: Shards,
    cfg: TrainConfig,
    info: DistInfo,
    autocast: contextlib.AbstractContextManager,
    ignore_id: int | None = None,
    lockstep: bool = False,
) -> float:
    """Mean next-token CE over the first eval_batches * batch_size val sequences (the same ones every time),
    targets equal to ignore_id (alignment PAD) not scored. model is the unwrapped module: a DDP forward could
    wait on buffer syncs that ranks without a slice skip. lockstep: the model is sharded and its forward is a
    collective, so a rank without a slice runs one sequence anyway and does not count it."""
    model.eval()
    n = min(shards.val.num_sequences(cfg.seq_len), cfg.eval_batches * cfg.batch_size)
    total = torch.zeros(2, dtype=torch.float64, device=info.device)  # (sum of losses, tokens)
    for start in range(0, n, cfg.batch_size):
        idx = np.arange(start, min(start + cfg.batch_size, n))
        local = np.array_split(idx, info.world_size)[info.rank]  # ranks split the batch; some may get none
        scored = len(local) > 0
        if not scored:
            if not lockstep:
                continue
            local = idx[:1]
        x, y = (t.to(info.device) for t in shards.val.batch(local, cfg.seq_len, ignore_id))
        with autocast:
            logits = model(x)
        loss, counted = cross_entropy_sum(logits, y)  # PAD and masked prompt targets are not scored
        if scored:
            total += torch.stack([loss.double(), counted.double()])
    all_reduce(total, info)
    model.train()
    return float(total[0] / total[1])


@torch.no_grad()
def greedy_sample(
    model: CausalLM,
    tok: Tokenizer,
    prompt: str,
    n: int,
    device: torch.device,
    autocast: contextlib.AbstractContextManager,
    info: DistInfo | None = None,
) -> str:
    """Greedy continuation of prompt (after an EOS, as documents start in training), no KV cache: a short
    progress check, not the serving path. With info (a sharded model: every rank samples together), each token
    is rank 0's, so all ranks run the same forwards and stop together."""
    model.eval()
    ids = [tok.eos_id, *tok.encode(prompt)]
    max_len = model.config.max_position_embeddings
    for _ in range(n):
        x = torch.tensor([ids[-max_len:]], device=device)
        with autocast:
            nxt = int(model(x)[0, -1].argmax())
        if info is not None:
            nxt = broadcast_from_main(nxt, info)
        if nxt == tok.eos_id:
            break
        ids.append(nxt)
    model.train()
    return tok.decode(ids[1:])
