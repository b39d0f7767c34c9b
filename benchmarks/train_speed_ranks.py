"""Data-parallel step time: ``ddn-train``'s own loop on N gloo ranks (CPU processes on this machine), as JSON.

Each rank runs :func:`ddn.training.train_loop.train` (loss, backward with the
gradient all-reduce, Adam, split-and-prune, weight average) on digits resized to
32x32; the step time is read from the run's ``log.jsonl`` (images/s of each
logging interval, checkpoint writes left out), the first interval dropped as
warm-up. The machine's load average is reported beside it. Usage:

    python benchmarks/train_speed_ranks.py [--ranks 2 --preset cpu --batch 64 --steps 60 --log-every 10]
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
from pathlib import Path

import click
import torch
import torch.multiprocessing as mp

from ddn.training.presets import PRESETS
from ddn.training.train_loop import TrainConfig, train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, config: TrainConfig, out_dir: Path) -> None:
    """One rank (torch.multiprocessing spawn target), one torch thread per process."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train(config, out_dir, progress=False)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--ranks", type=click.IntRange(min=1), default=2, help="Processes (gloo ranks).")
@click.option("--preset", type=click.Choice(PRESETS), default="cpu", help="Model preset.")
@click.option("--batch", type=click.IntRange(min=1), default=64, help="Global batch, split over the ranks.")
@click.option("--steps", type=click.IntRange(min=2), default=60, help="Steps of the run, warm-up interval included.")
@click.option("--log-every", type=click.IntRange(min=1), default=10, help="Steps per measured interval.")
def main(ranks: int, preset: str, batch: int, steps: int, log_every: int) -> None:
    """Print the trainer's step time on RANKS gloo processes as JSON."""
    config = TrainConfig(dataset="digits", image_size=32, preset=preset, steps=steps, batch=batch,
                         checkpoint_every=0, log_every=log_every, sample_seeds=1, device="cpu")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp) / "run"
        mp.start_processes(_rank, args=(ranks, _free_port(), config, out_dir), nprocs=ranks, join=True,
                           start_method="spawn")
        entries = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    ms = [1000 * batch / e["images_per_s"] for e in entries[1:]]
    print(json.dumps({"ranks": ranks, "preset": preset, "batch": batch, "steps_timed": log_every * len(ms),
                      "ms_per_step_median": statistics.median(ms), "ms_per_step_intervals": ms,
                      "load_average_1min": [load_before[0], os.getloadavg()[0]], "torch": torch.__version__},
                     indent=2))


if __name__ == "__main__":
    main()
