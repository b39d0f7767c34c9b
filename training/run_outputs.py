"""What a training run leaves for people to look at: sample grids, a JSON-lines log and a plot."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ddn.images import save_grid, to_uint8

from .networks import DDNGenerator


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] floats in [-1, 1] to uint8 [B, H, W, C]."""
    return to_uint8(images.detach().float().cpu().permute(0, 2, 3, 1).numpy())


def grid_scale(image_size: int) -> int:
    """Pixel repetition that makes small images (8x8 digits) about 32 px wide in a grid."""
    return max(1, 32 // image_size)


@torch.no_grad()
def save_sample_grid(model: DDNGenerator, path: Path, seeds: Sequence[int]) -> Path:
    """Samples of fixed seeds (codes_from_seed), so grids of successive checkpoints are comparable."""
    images = model.sample(seed=list(seeds))
    return save_grid(path, images_to_uint8(images), scale=grid_scale(model.image_size))


class RunLog:
    """Append-only JSON lines, one object per logging interval, each with a ``step``.

    The trainer's entries also carry ``time``: when the entry was logged, ISO 8601
    UTC (``2026-01-31T12:00:00.123Z``).
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Drop entries logged after ``step`` (a resumed run repeats those steps)."""
        if self.path.exists():
            kept = [e for e in self.read() if e.get("step", 0) <= step]
            self.path.write_text("".join(json.dumps(e) + "\n" for e in kept))

    def append(self, entry: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        entries = []
        for line in self.path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill mid-write
        return entries


def plot_run(entries: list[dict[str, Any]], path: Path, ks: Sequence[int]) -> Path | None:
    """Loss and usage entropy (as a share of log K of each DDL) against step, as one PNG.

    A lone entry is drawn as a dot (a line needs two points).
    """
    if not entries:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([e["step"] for e in entries])
    loss = np.array([e["loss"] for e in entries])
    entropy = np.array([e["usage_entropy"] for e in entries]) / np.log(np.maximum(ks, 2))  # [T, DDLs]
    splits = np.array([e["splits"] for e in entries])

    marker = "o" if len(entries) == 1 else None
    fig, (ax_loss, ax_use) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(steps, loss, marker=marker)
    ax_loss.set_yscale("log")
    ax_loss.set(xlabel="step", ylabel="loss (MSE, mean over layers)", title="training loss")
    ax_use.fill_between(steps, entropy.min(1), entropy.max(1), alpha=0.25, label="min-max over layers")
    ax_use.plot(steps, entropy.mean(1), marker=marker, label="mean over layers")
    ax_use.set(xlabel="step", ylabel="usage entropy / log K", title="branch usage", ylim=(0, 1.02))
    ax_splits = ax_use.twinx()
    ax_splits.plot(steps, splits, color="tab:red", linewidth=0.8, marker=marker, label="splits (cumulative)")
    ax_splits.set_ylabel("splits", color="tab:red")
    ax_use.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
