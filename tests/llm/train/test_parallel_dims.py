"""The layout is checked before any work: experts that don't divide over the expert-parallel group, a world that
doesn't factor into the dp x ep mesh, an option FSDP can't take, a batch that doesn't split over the ranks."""

from __future__ import annotations

import pytest

from llm.config import get_config
from llm.train import main
from llm.train.config import TrainConfig
from llm.train.parallel_dims import ParallelDims, plan_parallel_dims
from tests.llm.train.conftest import BASE

TINY = get_config("tiny")  # 4 experts


@pytest.mark.parametrize(
    ("options", "world", "message"),
    [
        ({"expert_parallel": 3}, 3, r"num_experts=4 is not divisible by --expert-parallel 3"),
        ({"expert_parallel": 2}, 3, r"world size 3 does not factor into the dp x ep mesh with --expert-parallel 2"),
        ({"expert_parallel": 2}, 1, r"world size 1 does not factor"),
        ({"fsdp": True, "compile": True}, 2, r"--fsdp cannot be combined with --compile"),
        ({"expert_parallel": 2, "compile": True}, 2, r"--expert-parallel cannot be combined with --compile"),
        ({"batch_size": 6}, 4, r"batch_size=6 is not divisible by the world size 4"),
    ],
)
def test_bad_layouts_are_named(options, world, message):
    with pytest.raises(ValueError, match=message):
        plan_parallel_dims(TrainConfig(**options), TINY, world)


def test_a_good_layout_and_its_description():
    dims = plan_parallel_dims(TrainConfig(expert_parallel=2, fsdp=True), TINY, 4)
    assert dims == ParallelDims(world_size=4, ep=2, fsdp=True) and dims.dp == 2 and dims.sharded
    assert dims.describe() == "4 processes, dp 2 x ep 2, FSDP"
    assert ParallelDims(2).describe() == "2 processes, DDP" and not ParallelDims(2).sharded
    assert ParallelDims(1).describe() == "1 process"
    assert ParallelDims(2, ep=2).describe() == "2 processes, dp 1 x ep 2"


def test_a_bad_layout_fails_through_main_before_any_work(tmp_path, corpus, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)  # a plain `python -m llm.train`: a world of one
    rc = main(["--data", str(corpus), "--out", str(tmp_path / "o"), *BASE, "--expert-parallel", "2"])
    assert rc == 2 and "world size 1 does not factor into the dp x ep mesh" in capsys.readouterr().err
    rc = main(["--data", str(corpus), "--out", str(tmp_path / "o"), *BASE, "--expert-parallel", "0"])
    assert rc == 2 and "expert_parallel must be a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
