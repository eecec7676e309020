"""AdamW's parameter groups and the learning-rate schedule."""

from __future__ import annotations

from llm.config import get_config
from llm.train.config import TrainConfig
from llm.train.optim import lr_factor, param_groups


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(warmup_steps=4, max_steps=20, min_lr_ratio=0.1)
    f = [lr_factor(s, cfg) for s in range(25)]
    assert f[0] == 0.25 and f[3] == 1.0 and f[4] == 1.0
    assert all(a >= b for a, b in zip(f[4:], f[5:]))
    assert abs(f[20] - 0.1) < 1e-9 and f[24] == f[20]


def test_param_groups_skip_norms_and_embeddings():
    from llm.model import CausalLM

    model = CausalLM(get_config("tiny"))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("norm" in names[id(p)] or "embed" in names[id(p)] for p in no_decay["params"])
    assert any("experts.w1" in names[id(p)] for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
