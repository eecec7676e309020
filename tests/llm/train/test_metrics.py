"""metrics.jsonl: a resumed run drops the rows after its checkpoint."""

from __future__ import annotations

import json

from llm.train.metrics import read_metrics, truncate_metrics


def test_truncate_keeps_the_steps_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert read_metrics(path) == []
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 7)))
    truncate_metrics(path, 4)
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()
    truncate_metrics(tmp_path / "new.jsonl", 0)  # a fresh run starts an empty file
    assert (tmp_path / "new.jsonl").read_text() == ""
