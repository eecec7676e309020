"""The batch sampler: deterministic, resumable from its state, and covering each epoch once."""

from __future__ import annotations

import numpy as np
import pytest

from llm.train.sampler import BatchSampler


def test_sampler_is_deterministic_resumable_and_covers_each_epoch():
    a = BatchSampler(10, 4, seed=7)
    batches = [a.next_indices() for _ in range(5)]  # 20 sequences: two full epochs
    assert sorted(np.concatenate(batches[:2] + [batches[2][:2]]).tolist()) == list(range(10))
    b = BatchSampler(10, 4, seed=7)
    b.next_indices()
    c = BatchSampler(10, 4, seed=7)
    c.load_state_dict(b.state_dict())
    assert all((c.next_indices() == x).all() for x in batches[1:])
    assert not (BatchSampler(10, 4, seed=8).next_indices() == batches[0]).all()
    with pytest.raises(ValueError, match="sequences"):
        BatchSampler(11, 4, seed=7).load_state_dict(b.state_dict())
