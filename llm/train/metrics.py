"""The run's record: OUT/metrics.jsonl (one JSON line per optimizer step), the progress bar, and loss.png.

A resumed run first drops the lines of steps after its checkpoint (they will be trained again), so the file
always describes one uninterrupted run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any

from common.fs import atomic_write

METRICS = "metrics.jsonl"
PLOT = "loss.png"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows of steps up to `step` (the checkpoint's): a resumed run appends from there."""
    kept = [r for r in read_metrics(path) if r["step"] <= step]
    with atomic_write(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)


class MetricsLog:
    """Appends rows to metrics.jsonl (rank 0) and drives the progress bar (rank 0, unless quiet)."""

    def __init__(self, path: Path, total: int, initial: int, enabled: bool, quiet: bool):
        from tqdm import tqdm

        self.path, self.enabled = path, enabled
        self.bar = tqdm(
            total=total,
            initial=initial,
            disable=quiet or not enabled,
            dynamic_ncols=True,
            unit="step",
            file=sys.stderr,
        )
        self.file: IO | None = open(path, "a") if enabled else None

    def note(self, text: str) -> None:
        """A line above the progress bar (rank 0)."""
        if self.enabled:
            self.bar.write(text)

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        self.bar.set_postfix(
            loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s']:.0f}", refresh=False
        )
        self.bar.update(1)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.bar.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plot_losses(metrics_path: Path, png: Path, title: str = "") -> bool:
    """Train and val loss against step (matplotlib, Agg); False (with a note) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; skipping the loss plot", file=sys.stderr)
        return False
    rows = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [r["ce_loss"] for r in rows], lw=0.8, alpha=0.7, label="train (CE)")
    val = [r for r in rows if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or str(metrics_path.parent))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True
