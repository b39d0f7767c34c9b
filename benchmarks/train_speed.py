"""Training throughput and the share of step time spent in split-and-prune, per model preset, as JSON.

Every named preset of ``ddn-train`` (:mod:`ddn.training.presets`) at MNIST's
32x32 gray size, on digits resized to 32x32, measured side by side in one
process (rounds alternate between them, so machine load drifts hit all alike).
Each preset runs at its own batch (``PRESET_BATCH``): the GPU-sized ones take
seconds per image on a CPU.

A step is the trainer's own ``train_step`` (loss, backward, Adam) plus
``usage_step`` (fold usage statistics, split and prune) and the weight average's
update, with ``ddn-train``'s defaults; ``usage_step`` is timed on its own too. Usage:

    python benchmarks/train_speed.py [--preset cpu --preset tiny ...] [--rounds 3 --steps 4 --device cpu --threads N]
"""
from __future__ import annotations

import json
import time

import click
import torch

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
    def __init__(self, name: str, model: torch.nn.Module, images: torch.Tensor, batch: int, device: torch.device):
        self.name, self.batch, self.device = name, batch, device
        self.model = model.to(device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, betas=(0.9, 0.999))
        self.average = TrainConfig().weight_average(self.model)
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)
        self.ranks = Ranks(device=device)
        self.dropout = torch.Generator().manual_seed(1)
        self.batches = batch_stream(images, batch, torch.Generator().manual_seed(0))
        self.step_s, self.usage_s, self.average_s, self.steps, self.splits = 0.0, 0.0, 0.0, 0, 0

    def run(self, steps: int, record: bool = True) -> None:
        for _ in range(steps):
            batch = next(self.batches).to(self.device)
            _sync(self.device)
            start = time.perf_counter()
            train_step(self.model.loss, self.optimizer, batch, 0.05, self.dropout, self.scaler)
            _sync(self.device)
            middle = time.perf_counter()
            splits = usage_step(self.model, self.optimizer, True, self.ranks, self.average)
            _sync(self.device)
            end = time.perf_counter()
            self.average.update(self.batch * (self.steps + 1), self.batch)
            _sync(self.device)
            end_average = time.perf_counter()
            if record:
                self.step_s += end_average - start
                self.usage_s += end - middle
                self.average_s += end_average - end
                self.steps += 1
                self.splits += splits

    def report(self) -> dict:
        params = sum(p.numel() for p in self.model.parameters())
        return {
            "config": self.model.config(),
            "parameters": params,
            "batch": self.batch,
            "steps_timed": self.steps,
            "ms_per_step": 1000 * self.step_s / self.steps,
            "images_per_s": self.batch * self.steps / self.step_s,
            "split_and_prune_ms_per_step": 1000 * self.usage_s / self.steps,
            "split_and_prune_share": self.usage_s / self.step_s,
            "splits_per_step": self.splits / self.steps,
            "weight_average_ms_per_step": 1000 * self.average_s / self.steps,
        }


@click.command()
@click.option("--preset", "presets", multiple=True, type=click.Choice(PRESETS), default=PRESETS, show_default=True,
              help="presets to measure (repeat the option)")
@click.option("--rounds", type=int, default=3, help="alternating rounds per preset")
@click.option("--steps", type=int, default=4, help="timed steps per preset per round")
@click.option("--warmup", type=int, default=2, help="untimed steps per preset first")
@click.option("--device", default="cpu", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
def main(presets: tuple[str, ...], rounds: int, steps: int, warmup: int, device: str, threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    torch.manual_seed(0)
    images = load_images("digits", image_size=32)  # digits resized to MNIST's 32x32 training size
    benches = [Bench(name, build_generator(preset_config(name, 32, 1)), images, PRESET_BATCH[name], dev)
               for name in presets]
    for bench in benches:
        bench.run(warmup, record=False)
    for _ in range(rounds):
        for bench in benches:
            bench.run(steps)
    result = {"device": str(dev), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
              "split_and_prune_target_share": 0.03, "presets": {b.name: b.report() for b in benches}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
