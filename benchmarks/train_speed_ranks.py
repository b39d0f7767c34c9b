"""Data-parallel step time on N gloo ranks (CPU processes): DistributedDataParallel against one flat all-reduce.

Every rank holds two identical replicas and steps them in the measuring core's
interleaved rounds, so machine load hits both alike. ``ddp`` is the trainer's own step
(:func:`~ddn.training.train_loop.train_step` on
:meth:`~ddn.training.distributed.Ranks.training_loss`: bucketed all-reduces
overlapped with the backward pass); ``flat_all_reduce`` is the reference it
replaced: the backward pass, then every gradient in one all-reduce. Both are
followed by the trainer's split-and-prune (usage summed over ranks), on the
same batches, so the two replicas must end with the same weights. Rank 0 hands
the per-step medians, their ratio paired by round and whether the weights agree
to the launching process, which prints them in the measuring core's report
(:class:`benchmarks.measure.BenchmarkRun`: command, date, machine, load). Usage:

    python -m benchmarks.train_speed_ranks [--ranks 2 --preset cpu --batch 64 --rounds 8 --steps 5]
"""
from __future__ import annotations

import copy
import json
import os
import socket
import statistics
import tempfile
from pathlib import Path

import click
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks.measure import BenchmarkRun, Method, interleaved
from ddn.training.datasets import batch_stream, load_images
from ddn.training.distributed import Ranks
from ddn.training.networks import build_generator
from ddn.training.presets import PRESETS, preset_config
from ddn.training.train_loop import TrainConfig, train_step, usage_step

CHAIN_DROPOUT = TrainConfig().chain_dropout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flat_all_reduce_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor,
                         generator: torch.Generator, world: int) -> None:
    """The reference: loss, backward, then all gradients averaged in one flat all-reduce, then Adam."""
    loss = model.loss(batch, CHAIN_DROPOUT, generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = list(model.parameters())
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    optimizer.step()


def _summary(times: dict[str, list[float]]) -> dict:
    """Per-method medians, and DDP's time over the flat all-reduce's paired by round (they ran back to back)."""
    return {"ms_per_step_median": {name: statistics.median(t) for name, t in times.items()},
            "ddp_over_flat": statistics.median(d / f for d, f in zip(times["ddp"], times["flat_all_reduce"])),
            "ms_per_step_rounds": times}


def _rank(rank: int, world: int, port: int, preset: str, batch: int, rounds: int, steps: int, result: Path) -> None:
    """One rank (torch.multiprocessing spawn target), one torch thread per process; rank 0 writes ``result``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ranks = Ranks.from_env("cpu")
    images = load_images("digits", image_size=32)[rank::world]
    torch.manual_seed(0)
    flat_model = build_generator(preset_config(preset, 32, 1)).train()
    ddp_model = copy.deepcopy(flat_model)
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in
                  (("flat_all_reduce", flat_model), ("ddp", ddp_model))}
    ddp_loss = ranks.training_loss(ddp_model)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    # Each method has its own data and dropout streams, seeded alike: both replicas see the same steps.
    dropout = {name: torch.Generator().manual_seed(rank) for name in optimizers}
    batches = {name: batch_stream(images, batch // world, torch.Generator().manual_seed(rank)) for name in optimizers}
    steps_of = {
        "flat_all_reduce": lambda b: flat_all_reduce_step(flat_model, optimizers["flat_all_reduce"], b,
                                                          dropout["flat_all_reduce"], world),
        "ddp": lambda b: train_step(ddp_loss, optimizers["ddp"], b, CHAIN_DROPOUT, dropout["ddp"], scaler),
    }
    models = {"flat_all_reduce": flat_model, "ddp": ddp_model}

    def slice_of(name: str) -> Method:
        """``steps`` steps of one method; every rank waits for the others first, so the slices line up."""
        def call() -> None:
            for _ in range(steps):
                steps_of[name](next(batches[name]))
                usage_step(models[name], optimizers[name], True, ranks)
        return Method(call, prepare=dist.barrier)

    # Every rank runs the same schedule (one warm-up slice each, then rotating rounds), so the collectives match.
    samples = interleaved({name: slice_of(name) for name in steps_of}, seconds=0, rounds=rounds)
    times = {name: [1000 * t / steps for t in samples[name].wall] for name in steps_of}
    if ranks.is_main:
        # Averaging over two ranks is exact either way, so the replicas must end bit-identical.
        same = all(torch.equal(a, b) for a, b in zip(flat_model.state_dict().values(), ddp_model.state_dict().values()))
        result.write_text(json.dumps({"ranks": world, "preset": preset, "batch": batch, "rounds": rounds,
                                     "steps_per_round": steps, **_summary(times), "same_weights": same}))
    ranks.close(finished=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--ranks", type=click.IntRange(min=2), default=2, help="Processes (gloo ranks).")
@click.option("--preset", type=click.Choice(PRESETS), default="cpu", help="Model preset.")
@click.option("--batch", type=click.IntRange(min=1), default=64, help="Global batch, split over the ranks.")
@click.option("--rounds", type=click.IntRange(min=1), default=8, help="Timed rounds per method (after one warm-up).")
@click.option("--steps", type=click.IntRange(min=1), default=5, help="Steps per method per round.")
def main(ranks: int, preset: str, batch: int, rounds: int, steps: int) -> None:
    """Print the 2-rank step time of DDP and of the flat all-reduce as JSON."""
    run = BenchmarkRun()
    with tempfile.TemporaryDirectory(prefix="ddn-train-speed-ranks-") as work:
        result = Path(work) / "rank0.json"
        mp.start_processes(_rank, args=(ranks, _free_port(), preset, batch, rounds, steps, result), nprocs=ranks,
                           join=True, start_method="spawn")
        results = json.loads(result.read_text())
    print(json.dumps(run.report(**results), indent=2))


if __name__ == "__main__":
    main()
