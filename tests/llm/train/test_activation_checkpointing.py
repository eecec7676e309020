"""Activation checkpointing recomputes each block in the backward: the same losses and gradients as without it."""

from __future__ import annotations

import torch

from llm.config import get_config
from llm.model import CausalLM
from llm.train import parse_config, train
from llm.train.activation_checkpointing import apply_activation_checkpointing
from tests.llm.train.conftest import assert_follows, run_args


def test_recomputed_blocks_give_the_same_gradients_and_keep_the_names():
    torch.manual_seed(0)
    plain = CausalLM(get_config("tiny"))
    checkpointed = CausalLM(get_config("tiny"))
    checkpointed.load_state_dict(plain.state_dict())
    apply_activation_checkpointing(checkpointed)
    assert list(checkpointed.state_dict()) == list(plain.state_dict())  # checkpoints and the export unchanged
    ids = torch.randint(0, 256, (2, 16))
    calls = {id(plain): 0, id(checkpointed): 0}
    for model in (plain, checkpointed):
        model.model.layers[0].self_attn.register_forward_hook(
            lambda *_, m=model: calls.__setitem__(id(m), calls[id(m)] + 1)
        )
        logits, router_logits = model(ids, return_router_logits=True)
        (logits.float().pow(2).mean() + sum(r.float().pow(2).mean() for r in router_logits)).backward()
    assert (calls[id(plain)], calls[id(checkpointed)]) == (1, 2)  # the block ran again in the backward
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0, msg=name)


def test_a_run_with_activation_checkpointing_follows_the_run_without(corpus, full_run, tmp_path):
    train(parse_config([*run_args(corpus, full_run, tmp_path), "--activation-checkpointing"]))
    assert_follows(full_run, tmp_path, tol=1e-6)
