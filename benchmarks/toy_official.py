"""The toy 2-D experiment, the official implementation and the project's side by side in one run, as JSON.

Both fit K points to each density from the same seed on one thread and are scored by
``distribution_playground``'s KL divergence; docs/benchmarks.md describes the official loop reproduced.

Usage: python -m benchmarks.toy_official [--k 2000] [--seed 0] [--densities gaussian,words]
"""
from __future__ import annotations

import json
import time

import click
import numpy as np
import torch

from benchmarks.measure import BenchmarkRun
from ddn.training import toy2d

OFFICIAL_STEPS, OFFICIAL_BATCH, OFFICIAL_LR = 1800, 40, 0.2


def official_fit(distribution, k: int, seed: int, steps: int = OFFICIAL_STEPS) -> np.ndarray:
    """The official toy training loop (GeneratorModel.train of toy_exp.py) on sddn's split-and-prune statistics."""
    import sddn

    np.random.seed(seed)
    param = np.random.random((k, 2)) * 2 - 1
    sdd = sddn.SplitableDiscreteDistribution(k)
    for _ in range(steps):
        gts = distribution.sample(OFFICIAL_BATCH)
        loss_matrix = np.abs(param[None] - gts[:, None]).sum(-1)
        i_nears = sdd.add_loss_matrix(loss_matrix)["i_nears"]
        split = sdd.try_split()
        if split:
            param[split["i_disapear"]] = param[split["i_split"]]
        for i_near, gt in zip(i_nears, gts):
            param[i_near] += 2 * (gt - param[i_near]) * OFFICIAL_LR
    return param


def timed(fit) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    points = fit()
    return points, time.perf_counter() - start


@click.command()
@click.option("--k", type=click.IntRange(min=2), default=2000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--densities", default=",".join(toy2d.DENSITY_NAMES), show_default=True)
@click.option("--official-steps", type=click.IntRange(min=1), default=OFFICIAL_STEPS, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=2700, show_default=True, help="the project's steps")
def main(k: int, seed: int, densities: str, official_steps: int, steps: int) -> None:
    run = BenchmarkRun()
    torch.set_num_threads(1)
    report = {"k": k, "seed": seed, "bins": toy2d.BINS, "official_steps": official_steps, "project_steps": steps,
              "densities": {}}
    for name, distribution in toy2d.load_densities(tuple(densities.split(","))).items():
        official, official_s = timed(lambda: official_fit(distribution, k, seed, official_steps))
        ours, ours_s = timed(lambda: toy2d.fit_points(distribution, k, steps, 40, 0.25, True, seed).numpy())
        np.random.seed(seed + 1)
        real = distribution.sample(k)
        kl = {method: round(float(distribution.divergence(points)["kl"]), 4)
              for method, points in (("official", official), ("project", ours), ("real_samples", real))}
        report["densities"][name] = {"kl": kl, "seconds": {"official": round(official_s, 2), "project": round(ours_s, 2)},
                                     "speedup": round(official_s / ours_s, 1)}
        click.echo(f"{name}: {json.dumps(report['densities'][name])}", err=True)
    print(json.dumps(run.report(**report), indent=2))


if __name__ == "__main__":
    main()
