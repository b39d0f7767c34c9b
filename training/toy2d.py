"""The DDN paper's toy 2-D experiment on the official densities and score: K free points as one DDL's candidates, each
sample moving its nearest point toward it, with split-and-prune. Runs every density, prints a JSON table and saves a
PNG; ``python -m ddn.training.toy2d -h`` (docs/training.md, README).
"""
from __future__ import annotations

import json
import time
from typing import Any

import click
import numpy as np
import torch
from torch import nn

from ddn.cli import CommandError, command

from .split_and_prune import BranchUsage, split_and_prune_

DENSITY_NAMES = ("gaussian", "blur_circles", "QR_code", "sprial", "words")  # the official names, "sprial" included
BINS = 100


def load_densities(names: tuple[str, ...] = DENSITY_NAMES, bins: int = BINS) -> dict[str, Any]:
    """name -> distribution_playground.DistributionByDensityArray on a bins x bins grid."""
    try:
        import distribution_playground as playground
    except ImportError as exc:
        raise RuntimeError("the toy experiment needs the official densities: pip install 'ddn-serve[toy]' "
                           f"({exc})") from None
    unknown = sorted(set(names) - set(playground.density_map_builders))
    if unknown:
        raise ValueError(f"unknown densities {unknown}; known: {sorted(playground.density_map_builders)}")
    return {name: playground.DistributionByDensityArray(playground.density_map_builders[name]((bins, bins))["density"])
            for name in names}


class Points(nn.Module):
    """K free points in the plane, uniform in [-1, 1]^2 at the start; the node set split-and-prune works on."""

    def __init__(self, k: int, rng: np.random.Generator):
        super().__init__()
        self.weight = nn.Parameter(torch.from_numpy(rng.uniform(-1, 1, (k, 2))), requires_grad=False)
        self.usage = BranchUsage(k)


def move_nearest_(points: torch.Tensor, samples: torch.Tensor, nearest: torch.Tensor, step: float) -> None:
    """Move each sample's nearest point ``step`` of the way toward it, samples applied in order.

    Samples that share a point are applied one after another (rank r of a point's
    samples in round r), exactly as a per-sample loop would.
    """
    order = torch.argsort(nearest, stable=True)
    sorted_nearest = nearest[order]
    first = torch.ones_like(sorted_nearest, dtype=torch.bool)
    first[1:] = sorted_nearest[1:] != sorted_nearest[:-1]
    starts = torch.cummax(torch.where(first, torch.arange(len(order)), 0), 0).values
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order)) - starts
    for r in range(int(rank.max()) + 1 if len(rank) else 0):
        now = rank == r
        index = nearest[now]
        points[index] += step * (samples[now] - points[index])


def fit_points(distribution: Any, k: int, steps: int, batch: int, step: float, split: bool,
               seed: int) -> torch.Tensor:
    """Train K points on samples of ``distribution``; returns float64 [K, 2]. The step falls linearly to 5 % over the
    run so late samples refine the points instead of jittering them.
    """
    rng = np.random.default_rng(seed)
    np.random.seed(seed)  # distribution_playground samples from numpy's global RNG
    points = Points(k, rng)
    data = torch.from_numpy(distribution.sample(steps * batch)).view(steps, batch, 2)
    for t, samples in enumerate(data):
        p = points.weight.detach()
        # Squared distances [batch, K] as |x|^2 + |p|^2 - 2 x.p: one matmul instead of a [batch, K, 2] difference.
        squared = samples[:, :1].square() + samples[:, 1:].square() + (p[:, 0].square() + p[:, 1].square())
        distances = torch.addmm(squared, samples, p.T, alpha=-2)
        nearest = distances.argmin(1)
        if split:  # the choices feed the statistics; the split happens before the points move, as officially
            points.usage.record(distances)
            split_and_prune_([points])
        move_nearest_(points.weight.data, samples, nearest, step * (1 - 0.95 * t / steps))
    return points.weight.detach()


def run(k: int = 2000, steps: int = 2700, batch: int = 40, step: float = 0.25, seed: int = 0,
        names: tuple[str, ...] = DENSITY_NAMES) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """Fit every density from a fresh start; returns (JSON table, arrays for plotting)."""
    table: dict = {"k": k, "steps": steps, "batch": batch, "step": step, "seed": seed, "bins": BINS,
                   "score": "distribution_playground divergence(points)['kl']", "densities": {}}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for name, distribution in load_densities(names).items():
        start = time.perf_counter()
        points = fit_points(distribution, k, steps, batch, step, split=True, seed=seed).numpy()
        seconds = time.perf_counter() - start
        np.random.seed(seed + 1)
        real = distribution.sample(k)
        scores = {"kl_split_and_prune": distribution.divergence(points)["kl"],
                  "kl_real_samples": distribution.divergence(real)["kl"]}
        table["densities"][name] = {**{key: round(float(v), 4) for key, v in scores.items()},
                                    "seconds": round(seconds, 2)}
        arrays[name] = {"density": distribution.density, "split_and_prune": points, "real_samples": real}
    return table, arrays


def plot(table: dict, arrays: dict[str, dict[str, np.ndarray]], path: str) -> None:
    """One row per density: the density, K real samples, the K trained points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(arrays), 3, figsize=(9, 3 * len(arrays)), squeeze=False)
    for row, (name, sets) in zip(axes, arrays.items()):
        row[0].imshow(sets["density"], extent=(-1, 1, -1, 1), cmap="viridis")
        row[0].set_title(name, fontsize=9)
        for ax, method in zip(row[1:], ("real_samples", "split_and_prune")):
            ax.imshow(sets["density"], extent=(-1, 1, -1, 1), cmap="Blues", vmax=1.5 * sets["density"].max())
            ax.scatter(sets[method][:, 0], sets[method][:, 1], s=1, c="tab:red", linewidths=0)
            ax.set_title(f"{method.replace('_', ' ')}: KL {table['densities'][name][f'kl_{method}']:.3f}", fontsize=9)
        for ax in row:
            ax.set(xlim=(-1, 1), ylim=(-1, 1), xticks=[], yticks=[], aspect="equal")
    fig.suptitle(f"K = {table['k']} points, {table['steps']} steps of {table['batch']} samples", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@command()
@click.option("--k", type=click.IntRange(min=1), default=2000, help="Number of points.")
@click.option("--steps", type=click.IntRange(min=1), default=2700, help="Steps per density.")
@click.option("--batch", type=click.IntRange(min=1), default=40, help="Samples per step.")
@click.option("--step", type=click.FloatRange(0, 1, min_open=True), default=0.25,
              help="Fraction of the way a chosen point moves at the start.")
@click.option("--seed", type=int, default=0, help="Seed of the start points and the samples.")
@click.option("--densities", default=",".join(DENSITY_NAMES), help="Comma-separated official density names.")
@click.option("--out", type=click.Path(dir_okay=False), default="toy2d.png", help="PNG of the points over each density.")
def main(k: int, steps: int, batch: int, step: float, seed: int, densities: str, out: str) -> None:
    """Fit K points to each official toy density with split-and-prune; print the scores as JSON, plot them to OUT."""
    with torch.random.fork_rng(devices=[]):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # [batch, K] tensors: a second thread costs more than it saves
        try:
            table, arrays = run(k, steps, batch, step, seed, tuple(n for n in densities.split(",") if n))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--densities") from None
        except RuntimeError as exc:
            raise CommandError(exc) from None
        finally:
            torch.set_num_threads(threads)
    plot(table, arrays, out)
    click.echo(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
