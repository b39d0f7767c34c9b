"""Training throughput and the share of step time spent in split-and-prune, per model preset, as JSON; with
``--against REV``, also the trainer's step of this checkout against that commit's, side by side.

    python -m benchmarks.train_speed [--preset cpu --preset tiny ...] [--rounds 3 --steps 4 --warmup 2]
                                     [--device cpu --threads N] [--against REV]

Every named preset of ``ddn-train`` (:mod:`ddn.training.presets`) at MNIST's
32x32 gray size, on digits resized to 32x32, timed in interleaved rounds in
one process (:mod:`benchmarks.measure`). Each preset runs at its own batch
(``PRESET_BATCH``): the GPU-sized ones take seconds per image on a CPU.

A step is the trainer's own (``_Run.train_one_step`` of a run started as
``ddn-train`` starts it, with its defaults): the optimizer step, then the
split-and-prune (fold usage statistics, split and prune) and the weight
average's update, which are also reported on their own.

``--against REV`` extracts commit REV (``git archive``) and runs each tree's own trainer step
(:mod:`benchmarks.train_step_worker`, one process per tree and preset) in interleaved rounds: the speed-up is REV's
median step time over this checkout's, overall and per round.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch

from benchmarks.measure import BenchmarkRun, Method, Samples, interleaved, summarize
from ddn.training.distributed import Ranks
from ddn.training.presets import PRESETS
from ddn.training.train_loop import TrainConfig, _start

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("train_step_worker.py")

# Batch per preset: the CPU-sized ones at ddn-train's default, the GPU-sized ones as small as still informative.
PRESET_BATCH = {"cpu": 64, "tiny": 64, "mnist-recurrence": 16, "cifar10": 4}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    """One preset's training run, as ``ddn-train`` starts it (the trainer's own ``_start``: optimizer, chain dropout,
    weight average, allocator policy); :meth:`step` is one trainer step, and notes how long its parts took.
    """

    def __init__(self, preset: str, device: str, out_dir: Path):
        self.batch = PRESET_BATCH[preset]
        config = TrainConfig(preset=preset, image_size=32, batch=self.batch, device=device)
        self.run = _start(config, out_dir, None, Ranks.from_env(device), lambda message: None)
        self.model, self.device = self.run.model, self.run.ranks.device
        self.usage_s: list[float] = []  # per step: split-and-prune, then the weight average
        self.average_s: list[float] = []
        self.splits: list[int] = []

    def step(self) -> None:
        self.run.descend(0.5)
        _sync(self.device)
        start = time.perf_counter()
        self.splits.append(self.run.split_and_prune())
        _sync(self.device)
        middle = time.perf_counter()
        self.run.update_average()
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


def resolve_commit(revision: str) -> str:
    """The full hash of ``revision`` in this checkout's repository."""
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise click.BadParameter(f"{revision!r} is not a commit of the repository at {ROOT}",
                                 param_hint="'--against'") from None


def extract_commit(commit: str, into: Path) -> None:
    """Write the files of ``commit`` into ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


class StepWorker:
    """A :mod:`benchmarks.train_step_worker` process: one tree's trainer, one preset."""

    def __init__(self, tree: Path, preset: str, device: str, threads: int):
        self.name = f"{preset} from {tree}"
        self.process = subprocess.Popen([sys.executable, str(WORKER), str(tree), preset, str(PRESET_BATCH[preset]),
                                         device, str(threads or torch.get_num_threads())],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        status, _, source = self.process.stdout.readline().strip().partition(" ")
        if status != "ready":
            raise click.ClickException(f"the step worker for {self.name} did not start (its error is above)")
        if not Path(source).resolve().is_relative_to(tree.resolve()):
            raise click.ClickException(f"the step worker for {self.name} imported the trainer from {source}")

    def steps(self, n: int) -> list[float]:
        """Wall seconds of each of ``n`` trainer steps."""
        self.process.stdin.write(f"{n}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise click.ClickException(f"the step worker for {self.name} exited (its error is above)")
        return json.loads(line)

    def close(self) -> int:
        """Stop the worker (killed if it does not end within a minute); its exit status."""
        self.process.stdin.close()
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def against_commit(commit: str, presets: tuple[str, ...], rounds: int, steps: int, warmup: int, device: str,
                   threads: int) -> dict:
    """This checkout's trainer step against ``commit``'s, per preset, in interleaved rounds."""
    with tempfile.TemporaryDirectory() as old_tree:
        extract_commit(commit, Path(old_tree))
        trees = {"this_checkout": ROOT, "commit": Path(old_tree)}
        results = {}
        for preset in presets:
            workers: dict[str, StepWorker] = {}
            slices: dict[str, list[list[float]]] = {name: [] for name in trees}
            try:
                for name, tree in trees.items():
                    workers[name] = StepWorker(tree, preset, device, threads)
                    workers[name].steps(warmup)
                interleaved({name: Method(lambda name=name: slices[name].append(workers[name].steps(steps)))
                             for name in workers}, seconds=0, rounds=rounds, warmup_calls=0, min_calls=1)
            finally:
                failed = [worker.name for worker in workers.values() if worker.close()]
            if failed:
                raise click.ClickException(f"the step worker for {failed[0]} failed (its error is above)")
            batch = PRESET_BATCH[preset]
            entry = {name: summarize(batch, [t for part in parts for t in part]) for name, parts in slices.items()}
            entry["speedup"] = round(entry["this_checkout"]["images_per_s"] / entry["commit"]["images_per_s"], 3)
            entry["speedup_by_round"] = [round(float(np.median(old) / np.median(new)), 3)
                                         for new, old in zip(slices["this_checkout"], slices["commit"])]
            results[preset] = entry
    return {"commit": commit, "presets": results}


@click.command()
@click.option("--preset", "presets", multiple=True, type=click.Choice(PRESETS), default=PRESETS, show_default=True,
              help="Presets to measure (repeat the option).")
@click.option("--rounds", type=int, default=3, show_default=True, help="Interleaved rounds.")
@click.option("--steps", type=int, default=4, show_default=True, help="Timed steps per preset and round.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed steps per preset first.")
@click.option("--device", default="cpu", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)
@click.option("--threads", type=int, default=0, help="Torch CPU threads (0: torch's default).")
@click.option("--against", "revision", metavar="REV",
              help="Also time the trainer's step of this checkout against commit REV's, one process each.")
def main(presets: tuple[str, ...], rounds: int, steps: int, warmup: int, device: str, threads: int,
         revision: str | None) -> None:
    run = BenchmarkRun()
    commit = None if revision is None else resolve_commit(revision)
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out_dir:
        benches = {name: Bench(name, device, Path(out_dir) / name) for name in presets}
        times = interleaved({name: Method(bench.step) for name, bench in benches.items()}, seconds=0,
                            rounds=rounds, warmup_calls=warmup, min_calls=steps)
    dev = next(iter(benches.values())).device
    against = {} if commit is None else {
        "against": {"revision": revision, **against_commit(commit, presets, rounds, steps, warmup, device, threads)}}
    click.echo(json.dumps(run.report(
        device=str(dev), torch_threads=torch.get_num_threads(), split_and_prune_target_share=0.03,
        presets={name: bench.report(times[name], warmup) for name, bench in benches.items()}, **against), indent=2))


if __name__ == "__main__":
    main()
