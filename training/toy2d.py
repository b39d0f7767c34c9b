"""The toy 2-D experiment of the DDN paper: K free points fitted to a density.

A DDN layer reduced to its core: K points in the plane are the K candidates of
one discrete distribution layer (a node set: ``weight`` [K, 2] and ``usage``).
Each training sample picks its nearest point with the guided sampler, only the
chosen points get a loss (MSE to their samples), and Adam moves them. Run with
and without split-and-prune from the same start -- every point in a tiny box at
the origin -- and scored against the true density.

Score: KL(true || points) between 2-D histograms on a fixed BINS x BINS grid
over [-1, 1]^2, the true one from TRUE_SAMPLES samples. Empty bins would make
KL infinite, so every histogram is smoothed the same way: probabilities +
EPSILON per bin, renormalised (see :func:`kl_divergence`). EPSILON = 1e-4 is a
tenth of a uniform bin's mass (1/1024); it caps the cost of an empty bin. The
ordering of the methods was the same for every EPSILON from 1e-3 to 1e-6.
The baseline is the same KL for K real samples drawn iid from the density: the
paper's claim is that K points trained with split-and-prune beat K real
samples, and that without split-and-prune many points stay stuck at the start
(dead nodes).

    python -m ddn.training.toy2d [--k 1000] [--steps 3000] [--out toy2d.png] [--seed 0]

prints a JSON table and saves a PNG of the points over each density.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from typing import Callable, Iterator

import torch
from torch import nn

from .split_and_prune import BranchUsage, split_and_prune_

BINS = 32  # histogram grid for the score, BINS x BINS over [-1, 1]^2
EPSILON = 1e-4  # added to every bin probability of every histogram before the KL
TRUE_SAMPLES = 2_000_000  # samples for the true density's histogram
EVAL_SAMPLES = 50_000  # samples for counting dead points after training
INIT_HALF_WIDTH = 0.01  # points start uniform in [-w, w]^2: all at "one place"

# -----------------------------------------------------------------------------
# Densities on [-1, 1]^2. Each sampler maps (n, generator) to [n, 2] float32.

Sampler = Callable[[int, torch.Generator], torch.Tensor]


def _in_box(draw: Sampler) -> Sampler:
    """Rejection to [-1, 1]^2, so that the density and its histogram have the same support."""

    def sample(n: int, gen: torch.Generator) -> torch.Tensor:
        kept, total = [], 0
        while total < n:
            x = draw(2 * n, gen)
            x = x[(x.abs() <= 1).all(1)]
            kept.append(x)
            total += len(x)
        return torch.cat(kept)[:n]

    return sample


@_in_box
def gaussian_mixture(n: int, gen: torch.Generator) -> torch.Tensor:
    """Eight Gaussians on a circle plus one at the centre, unequal weights."""
    angles = torch.arange(8) * (2 * math.pi / 8)
    means = torch.cat([torch.zeros(1, 2), 0.65 * torch.stack([angles.cos(), angles.sin()], 1)])
    weights = torch.tensor([2.0, 1, 1, 1, 1, 1, 1, 1, 1])
    std = torch.tensor([0.12, 0.06, 0.06, 0.06, 0.06, 0.06, 0.06, 0.06, 0.06])
    which = torch.multinomial(weights, n, replacement=True, generator=gen)
    return means[which] + std[which, None] * torch.randn(n, 2, generator=gen)


@_in_box
def rings(n: int, gen: torch.Generator) -> torch.Tensor:
    """Three concentric rings, mass proportional to circumference (uniform along the curves)."""
    radii = torch.tensor([0.3, 0.6, 0.9])
    r = radii[torch.multinomial(radii, n, replacement=True, generator=gen)]
    r = r + 0.025 * torch.randn(n, generator=gen)
    theta = 2 * math.pi * torch.rand(n, generator=gen)
    return torch.stack([r * theta.cos(), r * theta.sin()], 1)


@_in_box
def spiral(n: int, gen: torch.Generator) -> torch.Tensor:
    """One arm winding twice around the origin, uniform along its length (roughly)."""
    t = torch.rand(n, generator=gen).sqrt()  # sqrt: arc length grows with radius
    theta = 4 * math.pi * t
    r = 0.9 * t
    x = torch.stack([r * theta.cos(), r * theta.sin()], 1)
    return x + 0.03 * torch.randn(n, 2, generator=gen)


def smiley_bitmap(size: int = BINS, supersample: int = 4) -> torch.Tensor:
    """A smiley drawn procedurally: [size, size] intensities in [0, 1], row 0 at the top.

    Anti-aliased by supersampling so that edge pixels get fractional intensity.
    At size BINS its pixels are the score's bins, so the true histogram is the
    bitmap itself (up to sampling noise).
    """
    fine = size * supersample
    c = (torch.arange(fine) + 0.5) / fine * 2 - 1
    y, x = -c[:, None], c[None, :]  # row 0 is the top edge, y = +1
    r = (x * x + y * y).sqrt()
    face = (r - 0.8).abs() < 0.08
    eyes = ((x.abs() - 0.3) ** 2 + (y - 0.3) ** 2).sqrt() < 0.13
    mouth = ((r - 0.5).abs() < 0.07) & (y < -0.15)
    ink = (face | eyes | mouth).float()
    return ink.view(size, supersample, size, supersample).mean((1, 3))


def bitmap_sampler(bitmap: torch.Tensor) -> Sampler:
    """Pick a pixel with probability proportional to its intensity, then a uniform point inside it."""
    rows, cols = bitmap.shape
    probs = bitmap.flatten()

    def sample(n: int, gen: torch.Generator) -> torch.Tensor:
        pixel = torch.multinomial(probs, n, replacement=True, generator=gen)
        jitter = torch.rand(n, 2, generator=gen)
        x = -1 + (pixel % cols + jitter[:, 0]) * (2 / cols)
        y = 1 - (pixel // cols + jitter[:, 1]) * (2 / rows)
        return torch.stack([x, y], 1)

    return sample


DENSITIES: dict[str, Sampler] = {
    "gaussian_mixture": gaussian_mixture,
    "rings": rings,
    "spiral": spiral,
    "smiley_bitmap": bitmap_sampler(smiley_bitmap()),
}

# -----------------------------------------------------------------------------
# The K points: a node set trained by the guided sampler.


class Points(nn.Module):
    """K free points in the plane; the node set split-and-prune works on."""

    def __init__(self, k: int, gen: torch.Generator):
        super().__init__()
        start = (torch.rand(k, 2, generator=gen) * 2 - 1) * INIT_HALF_WIDTH
        self.weight = nn.Parameter(start)
        self.usage = BranchUsage(k)


@contextlib.contextmanager
def _small_tensor_cpu_mode() -> Iterator[None]:
    """One intra-op thread and subnormals flushed to zero, restored on exit.

    Each step's tensors are small ([batch, K]): more threads cost more in
    synchronisation than they save, and with another process on the cores
    OpenMP's waiting made a run 10x slower. Adam's moments of a point that
    stops being chosen decay into subnormal floats, which are many times
    slower on x86; flushing them changes nothing we measure.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)  # torch's default; it has no getter to restore from
        torch.set_num_threads(threads)


def train_points(sample: Sampler, k: int, steps: int, batch: int, lr: float,
                 split: bool, seed: int) -> Points:
    """Fit K points to ``sample``'s density; the same seed gives the same start and data with or without split."""
    gen = torch.Generator().manual_seed(seed)
    points = Points(k, gen)
    optimizer = torch.optim.Adam(points.parameters(), lr=lr)
    # Linear decay to zero: the late steps settle the points instead of jittering them by ~lr.
    # Measured at K=1000: it halved the split-and-prune KL of a constant 1e-2 or 3e-3.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    for _ in range(steps):
        x = sample(batch, gen)
        with torch.no_grad():  # the guided sampler: each sample picks its nearest point
            distances = torch.cdist(x, points.weight)
            chosen = distances.argmin(1)
            if split:  # the usage statistics only feed split-and-prune
                points.usage.record(distances)
        loss = (points.weight[chosen] - x).pow(2).mean()  # only the chosen points get gradient
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if split:
            split_and_prune_([points], optimizer)
    return points


def dead_fraction(points: torch.Tensor, samples: torch.Tensor) -> float:
    """Fraction of points that are no sample's nearest."""
    used = torch.zeros(len(points), dtype=torch.bool)
    for x in samples.split(10_000):
        used[torch.cdist(x, points).argmin(1)] = True
    return float((~used).sum()) / len(points)

# -----------------------------------------------------------------------------
# The score.


def histogram(x: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """Counts [bins (y, bottom to top), bins (x)] on [-1, 1]^2; points outside land in the edge bins."""
    index = ((x.double() + 1) / 2 * bins).floor().long().clamp(0, bins - 1)
    flat = index[:, 1] * bins + index[:, 0]
    return torch.bincount(flat, minlength=bins * bins).view(bins, bins).double()


def kl_divergence(p_counts: torch.Tensor, q_counts: torch.Tensor, epsilon: float = EPSILON) -> float:
    """KL(p || q) in nats of two histograms, each normalised, plus ``epsilon`` per bin, renormalised."""

    def smooth(counts: torch.Tensor) -> torch.Tensor:
        p = counts.double().flatten()
        p = p / p.sum() + epsilon
        return p / p.sum()

    p, q = smooth(p_counts), smooth(q_counts)
    return float((p * (p / q).log()).sum())

# -----------------------------------------------------------------------------
# The experiment.


def run(k: int = 1000, steps: int = 3000, batch: int = 500, lr: float = 1e-2, seed: int = 0,
        densities: dict[str, Sampler] = DENSITIES) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """Train with and without split-and-prune on every density; returns (JSON table, point sets for plotting)."""
    table: dict = {"k": k, "steps": steps, "batch": batch, "lr": lr, "seed": seed,
                   "bins": BINS, "epsilon": EPSILON, "densities": {}}
    point_sets: dict[str, dict[str, torch.Tensor]] = {}
    with _small_tensor_cpu_mode():
        for i, (name, sample) in enumerate(densities.items()):
            gen = torch.Generator().manual_seed(seed * len(densities) + i)
            train_seed = int(torch.randint(2**62, (), generator=gen))  # both methods: same start, same data
            true = histogram(sample(TRUE_SAMPLES, gen))
            sets = {"real_samples": sample(k, gen)}
            for method, split in (("no_split", False), ("split_and_prune", True)):
                sets[method] = train_points(sample, k, steps, batch, lr, split, train_seed).weight.detach()
            fresh = sample(EVAL_SAMPLES, gen)
            table["densities"][name] = {
                **{f"kl_{method}": round(kl_divergence(true, histogram(x)), 4) for method, x in sets.items()},
                "dead_no_split": dead_fraction(sets["no_split"], fresh),
                "dead_split_and_prune": dead_fraction(sets["split_and_prune"], fresh),
            }
            point_sets[name] = {"true": true, **sets}
    return table, point_sets


def plot(table: dict, point_sets: dict[str, dict[str, torch.Tensor]], path: str) -> None:
    """One row per density, one column per method: the points over the true density."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = ("real_samples", "no_split", "split_and_prune")
    fig, axes = plt.subplots(len(point_sets), len(methods), figsize=(3.2 * len(methods), 3.2 * len(point_sets)),
                             squeeze=False)
    for row, (name, sets) in zip(axes, point_sets.items()):
        for ax, method in zip(row, methods):
            true = sets["true"].numpy()  # light background (vmax above the peak) so the points stand out
            ax.imshow(true, origin="lower", extent=(-1, 1, -1, 1), cmap="Blues", vmin=0, vmax=1.5 * true.max())
            x = sets[method].numpy()
            ax.scatter(x[:, 0], x[:, 1], s=3, c="tab:red", linewidths=0)
            scores = table["densities"][name]
            title = f"{name}\n{method.replace('_', ' ')}: KL {scores[f'kl_{method}']:.3f}"
            if f"dead_{method}" in scores:
                title += f", {scores[f'dead_{method}']:.0%} dead"
            ax.set_title(title, fontsize=9)
            ax.set(xlim=(-1, 1), ylim=(-1, 1), xticks=[], yticks=[], aspect="equal")
    fig.suptitle(f"K = {table['k']} points, {table['steps']} steps", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=1000, help="number of points")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps per run")
    parser.add_argument("--batch", type=int, default=500, help="samples per step")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="toy2d.png", help="PNG of the points over each density")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    table, point_sets = run(args.k, args.steps, args.batch, args.lr, args.seed)
    table["seconds"] = round(time.perf_counter() - start, 1)
    plot(table, point_sets, args.out)
    json.dump(table, sys.stdout, indent=2)
    print()
    return table


if __name__ == "__main__":
    main()
