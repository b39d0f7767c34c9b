"""Training throughput and the share of step time spent in split-and-prune, per model preset, as JSON.

    python -m benchmarks.train_speed [--preset cpu --preset tiny ...] [--rounds 3 --steps 4 --warmup 2]
                                     [--device cpu --threads N]

Every named preset of ``ddn-train`` (:mod:`ddn.training.presets`) at MNIST's
32x32 gray size, on digits resized to 32x32, timed in interleaved rounds in
one process (:mod:`benchmarks.measure`). Each preset runs at its own batch
(``PRESET_BATCH``): the GPU-sized ones take seconds per image on a CPU.

A step is the trainer's own ``train_step`` (loss, backward, Adam) plus
``usage_step`` (fold usage statistics, split and prune) and the weight average's
update, with ``ddn-train``'s defaults; the last two are also reported on their own.
"""
from __future__ import annotations

import json
import time

import click
import numpy as np
import torch

from benchmarks.measure import BenchmarkRun, Method, Samples, interleaved, summarize
from ddn.training.allocator import retain_freed_memory
from ddn.training.datasets import batch_stream, load_images
from ddn.training.distributed import Ranks, resolve_device
from ddn.training.networks import build_generator
from ddn.training.presets import PRESETS, preset_config
from ddn.training.train_loop import TrainConfig, train_step, usage_step

# Batch per preset: the CPU-sized ones at ddn-train's default, the GPU-sized ones as small as still informative.
PRESET_BATCH = {"cpu": 64, "tiny": 64, "mnist-recurrence": 16, "cifar10": 4}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    """One preset's training run; :meth:`step` is one timed call, and notes how long its parts took."""

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, batch: int, device: torch.device):
        self.batch, self.device = batch, device
        self.model = model.to(device).train()
        defaults = TrainConfig()  # the default recipe's optimizer, chain dropout and weight average
        self.optimizer = defaults.optimizer(self.model)
        self.chain_dropout = defaults.chain_dropout
        self.average = defaults.weight_average(self.model)
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)
        self.ranks = Ranks(device=device)
        self.dropout = torch.Generator().manual_seed(1)
        self.batches = batch_stream(images, batch, torch.Generator().manual_seed(0))
        self.steps = 0
        self.usage_s: list[float] = []  # per step: split-and-prune, then the weight average
        self.average_s: list[float] = []
        self.splits: list[int] = []

    def step(self) -> None:
        batch = next(self.batches).to(self.device)
        train_step(self.model.loss, self.optimizer, batch, self.chain_dropout, self.dropout, self.scaler)
        _sync(self.device)
        start = time.perf_counter()
        self.splits.append(usage_step(self.model, self.optimizer, True, self.ranks, self.average))
        _sync(self.device)
        middle = time.perf_counter()
        self.steps += 1
        self.average.update(self.batch * self.steps, self.batch)
        _sync(self.device)
        self.usage_s.append(middle - start)
        self.average_s.append(time.perf_counter() - middle)

    def report(self, times: Samples, warmup: int) -> dict:
        """The preset's numbers from the timed steps (the first ``warmup`` steps were untimed)."""
        step_s = float(np.mean(times.wall))
        usage_s, average_s = np.mean(self.usage_s[warmup:]), np.mean(self.average_s[warmup:])
        return {
            "config": self.model.config(),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "batch": self.batch,
            "steps_timed": len(times.wall),
            "ms_per_step": 1000 * step_s,
            "images_per_s": self.batch / step_s,
            "step": summarize(self.batch, times),
            "split_and_prune_ms_per_step": 1000 * usage_s,
            "split_and_prune_share": usage_s / step_s,
            "splits_per_step": float(np.mean(self.splits[warmup:])),
            "weight_average_ms_per_step": 1000 * average_s,
        }


@click.command()
@click.option("--preset", "presets", multiple=True, type=click.Choice(PRESETS), default=PRESETS, show_default=True,
              help="Presets to measure (repeat the option).")
@click.option("--rounds", type=int, default=3, show_default=True, help="Interleaved rounds.")
@click.option("--steps", type=int, default=4, show_default=True, help="Timed steps per preset and round.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed steps per preset first.")
@click.option("--device", default="cpu", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)
@click.option("--threads", type=int, default=0, help="Torch CPU threads (0: torch's default).")
def main(presets: tuple[str, ...], rounds: int, steps: int, warmup: int, device: str, threads: int) -> None:
    run = BenchmarkRun()
    retain_freed_memory()  # as train() does
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    torch.manual_seed(0)
    images = load_images("digits", image_size=32)  # digits resized to MNIST's 32x32 training size
    benches = {name: Bench(build_generator(preset_config(name, 32, 1)), images, PRESET_BATCH[name], dev)
               for name in presets}
    times = interleaved({name: Method(bench.step) for name, bench in benches.items()}, seconds=0, rounds=rounds,
                        warmup_calls=warmup, min_calls=steps)
    click.echo(json.dumps(run.report(
        device=str(dev), torch_threads=torch.get_num_threads(), split_and_prune_target_share=0.03,
        presets={name: bench.report(times[name], warmup) for name, bench in benches.items()}), indent=2))


if __name__ == "__main__":
    main()
