"""The split-K plan of the paged attention kernel (kernels/triton/paged_split.py); the merge kernel runs in every
split case of tests/kernels/test_paged_attention.py."""

from __future__ import annotations

import importlib

import pytest
import torch

pytest.importorskip("triton")
split = importlib.import_module("kernels.triton.paged_split")


def test_split_plan_covers_every_key():
    for programs, max_ctx in [(1, 32768), (8, 4096), (512, 4096), (3, 100), (1, 1)]:
        splits, partition = split.split_plan(programs, max_ctx, torch.device("cpu"), None)
        assert splits >= 1 and partition % split.PARTITION_ALIGN == 0
        assert splits * partition >= max_ctx > (splits - 1) * partition or max_ctx <= partition


def test_enough_programs_need_no_split():
    # 8 programs fill the pretend CPU "GPU"; a forced count is honoured up to one partition per aligned chunk.
    assert split.split_plan(8, 4096, torch.device("cpu"), None)[0] == 1
    splits, partition = split.split_plan(1, 4096, torch.device("cpu"), 4)
    assert splits == 4 and partition * 4 == 4096
