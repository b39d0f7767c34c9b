"""The training loop: guided-sampler loss, Adam, split-and-prune, checkpoints. No framework.

One step, on every rank::

    loss = model.loss(batch, chain_dropout, dropout_generator)   # records branch usage
    loss.backward(); average gradients over ranks; adam.step()
    split_and_prune_(model.ddls(), adam, all_reduce)              # usage summed over ranks first

Every random draw comes from an explicit ``torch.Generator`` (data order and
chain dropout, one of each per rank), and the model is initialised under a
fixed seed, so a run is a pure function of its config. Checkpoints hold those
generators' states and Adam's moments, which is what makes ``resume`` land on
the same bits as a run that was never stopped.

Data-parallel: launched by ``torchrun`` (the WORLD_SIZE/RANK environment), each
rank trains on its own shard (``images[rank::world]``) with ``batch / world``
images per step; gradients are averaged by all-reduce and the split-and-prune
statistics are summed before each decision, so every rank takes the same
decision and the replicas stay identical. Only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .datasets import batch_stream, load_images
from .networks import DDNGenerator, build_generator
from .run_outputs import RunLog, plot_run, save_sample_grid
from .split_and_prune import split_and_prune_
from .train_state import LAST, PREVIOUS, find_resumable, load_optimizer_state, write_run_checkpoint

RNG_STREAMS = ("data", "dropout")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    """Everything that defines a run. Stored in every checkpoint; ``resume`` continues it."""

    dataset: str = "digits"
    image_size: int | None = None  # None: the dataset's own size
    kind: str = "single_shot"  # or "recurrence"
    channels: int = 64
    blocks_per_scale: int = 2  # single_shot
    iterations: int = 10  # recurrence
    k: int = 64
    steps: int = 2000
    batch: int = 64  # global: each of N ranks takes batch / N
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    chain_dropout: float = 0.05
    split_and_prune: bool = True
    checkpoint_every: int = 500  # 0: only at the end
    log_every: int = 50
    sample_seeds: int = 64  # the grid shows seeds 0 .. sample_seeds-1
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda
    precision: str = "fp32"  # fp32, bf16 or fp16 autocast

    def model_config(self, image_channels: int, image_size: int) -> dict[str, Any]:
        if self.kind == "single_shot":
            size = dict(blocks_per_scale=self.blocks_per_scale)
        elif self.kind == "recurrence":
            size = dict(iterations=self.iterations)
        else:
            raise ValueError(f"unknown model kind {self.kind!r}; expected single_shot or recurrence")
        return dict(kind=self.kind, image_size=image_size, image_channels=image_channels,
                    channels=self.channels, k=self.k, **size)


# Options a resumed run may change; everything else must match the checkpoint.
ADJUSTABLE_ON_RESUME = {"steps", "checkpoint_every", "log_every", "sample_seeds", "device", "precision"}


def resume_config(stored: dict[str, Any], given: TrainConfig, explicit: set[str] | None) -> TrainConfig:
    """The stored config with the options the user gave now applied.

    ``explicit`` names the options the user set (the CLI knows); None means
    "every field of ``given``". Changing a fixed option raises ValueError.
    """
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in stored.items() if k in known})
    for name in sorted(known if explicit is None else explicit & known):
        old, new = getattr(config, name), getattr(given, name)
        if old == new:
            continue
        if name not in ADJUSTABLE_ON_RESUME:
            raise ValueError(f"--{name.replace('_', '-')} cannot change on resume (checkpoint has {old!r}, got {new!r}); "
                             f"only {', '.join(sorted(ADJUSTABLE_ON_RESUME))} can")
        setattr(config, name, new)
    return config


def stream_seed(seed: int, rank: int, stream: str, restart_step: int = 0) -> int:
    """A 64-bit seed per (run seed, rank, stream), independent across all three."""
    entropy = [seed, rank, RNG_STREAMS.index(stream), restart_step]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


# -- data-parallel plumbing ---------------------------------------------------------

@dataclass
class Ranks:
    """This process's place in a (possibly single-process) data-parallel run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # we called init_process_group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> "Ranks":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
        resolved = resolve_device(device, local_rank if world > 1 else None)
        owns = False
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
            owns = True
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        return cls(rank, world, resolved, owns)

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Sum in place over ranks (a no-op alone)."""
        if self.world_size > 1:
            dist.all_reduce(tensor)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """One flat all-reduce of all gradients, divided by the number of ranks."""
        if self.world_size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Make every rank start from rank 0's parameters and buffers."""
        if self.world_size > 1:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, 0)

    def gather_cpu(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of an equally shaped CPU tensor (on every rank)."""
        if self.world_size == 1:
            return [tensor.clone()]
        comm = tensor.to(self.device)
        parts = [torch.empty_like(comm) for _ in range(self.world_size)]
        dist.all_gather(parts, comm)
        return [p.cpu() for p in parts]

    def agree(self, flag: bool) -> bool:
        """True on every rank if it is true on any rank."""
        if self.world_size == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self, finished: bool) -> None:
        if self.owns_group and dist.is_initialized():
            if finished:
                dist.barrier()  # rank 0 may still be writing the last checkpoint
            dist.destroy_process_group()


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but no CUDA device is available")
        return torch.device("cuda", local_rank or 0)
    return torch.device("cpu")


def autocast_for(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError("fp16 mixed precision needs --device cuda (use bf16 on CPU)")
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


# -- one step -------------------------------------------------------------------------

def train_step(model: DDNGenerator, optimizer: torch.optim.Optimizer, batch: torch.Tensor, chain_dropout: float,
               generator: torch.Generator, ranks: Ranks, scaler: torch.amp.GradScaler,
               autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> torch.Tensor:
    """Loss, backward, gradient averaging and the Adam update. Returns the detached loss."""
    with autocast():
        loss = model.loss(batch, chain_dropout, generator)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    ranks.average_gradients(list(model.parameters()))
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def usage_step(model: DDNGenerator, optimizer: torch.optim.Optimizer, enabled: bool, ranks: Ranks) -> int:
    """Fold this step's (rank-summed) usage into the statistics; split and prune when enabled."""
    all_reduce = ranks.all_reduce if ranks.world_size > 1 else None
    if enabled:
        return split_and_prune_(model.ddls(), optimizer, all_reduce)
    for ddl in model.ddls():
        ddl.usage.fold_step(all_reduce)
    return 0


# -- the run --------------------------------------------------------------------------

@dataclass
class TrainResult:
    model: DDNGenerator
    optimizer: torch.optim.Optimizer
    step: int
    splits: int
    out_dir: Path
    config: TrainConfig
    rank: int = 0
    stopped_early: bool = False  # interrupted or out of time; the checkpoint is there to resume


class _StopRequest:
    """Turns the first Ctrl-C / SIGTERM into "finish this step, checkpoint, stop" (single process)."""

    def __init__(self, active: bool):
        self.requested = False
        self.active = active and threading.current_thread() is threading.main_thread()
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if self.active:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signum, self._previous[signum])  # a second one stops at once

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(config: TrainConfig, out_dir: str | Path, resume: bool = False, explicit: set[str] | None = None,
          progress: bool = True, max_seconds: float | None = None,
          log: Callable[[str], None] = lambda message: tqdm.write(message)) -> TrainResult:
    """Train (or continue) the run in ``out_dir``; returns the final model and optimizer.

    With ``resume`` the newest good checkpoint in ``out_dir`` is continued and
    ``config`` only supplies the options in ``explicit`` (see :func:`resume_config`).
    ``max_seconds`` stops early (all ranks agree) with a checkpoint.
    """
    out_dir = Path(out_dir)
    if not resume and ((out_dir / LAST).exists() or (out_dir / PREVIOUS).exists()):
        raise ValueError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
    # Under torchrun every rank reads the checkpoint; only rank 0 may move a bad one aside.
    state = find_resumable(out_dir, move_bad=os.environ.get("RANK", "0") == "0") if resume else None
    if state is not None:
        config = resume_config(state.train["config"], config, explicit)
    ranks = Ranks.from_env(config.device)
    finished = False
    try:
        result = _train(config, out_dir, state, ranks, progress, max_seconds, log)
        finished = True
        return result
    finally:
        ranks.close(finished)


def _train(config, out_dir, state, ranks: Ranks, progress, max_seconds, log) -> TrainResult:
    say = log if ranks.is_main else (lambda message: None)
    for note in state.notes if state else []:
        say(f"warning: {note}")
    if config.batch % ranks.world_size:
        raise ValueError(f"--batch {config.batch} does not split evenly over {ranks.world_size} ranks")
    if config.log_every < 1:
        raise ValueError(f"--log-every must be at least 1, got {config.log_every}")
    autocast = autocast_for(ranks.device, config.precision)

    images = load_images(config.dataset, config.image_size)  # [N, C, S, S], S a power of two
    dataset_info = {"n": int(images.shape[0]), "shape": list(images.shape[1:])}
    shard = images[ranks.rank::ranks.world_size]

    if state is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = build_generator(config.model_config(images.shape[1], images.shape[-1]))
    else:
        model = state.model
        if state.train.get("dataset") != dataset_info:
            say(f"warning: the dataset changed since the checkpoint ({state.train.get('dataset')} -> {dataset_info})")
    model = model.to(ranks.device).train()
    ranks.broadcast_module(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
    scaler = torch.amp.GradScaler(ranks.device.type, enabled=config.precision == "fp16")

    step, splits, images_seen = 0, 0, 0
    generators = {name: torch.Generator().manual_seed(stream_seed(config.seed, ranks.rank, name)) for name in RNG_STREAMS}
    batches = batch_stream(shard, config.batch // ranks.world_size, generators["data"])
    if state is not None:
        step, splits, images_seen = state.train["step"], state.train["splits"], state.train["images_seen"]
        load_optimizer_state(optimizer, state.optimizer_state)
        if state.train.get("scaler"):
            scaler.load_state_dict(state.train["scaler"])
        if state.train["world_size"] == ranks.world_size:
            generators["dropout"].set_state(state.rng["dropout"][ranks.rank])
            for _ in range(step):  # replay the data order up to where the run stopped
                next(batches)
            if not torch.equal(generators["data"].get_state(), state.rng["data"][ranks.rank]):
                say("warning: the data order differs from the interrupted run's (dataset changed?)")
        else:
            say(f"warning: the checkpoint was written by {state.train['world_size']} rank(s), now {ranks.world_size}: "
                "continuing with fresh data order and dropout streams (not bitwise reproducible)")
            for name in RNG_STREAMS:
                generators[name].manual_seed(stream_seed(config.seed, ranks.rank, name, restart_step=step))
            batches = batch_stream(shard, config.batch // ranks.world_size, generators["data"])

    run_log = RunLog(out_dir / "log.jsonl")
    if ranks.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        run_log.truncate_after(step)
        (out_dir / "config.json").write_text(json.dumps(
            {"train": dataclasses.asdict(config), "model": model.config(), "world_size": ranks.world_size}, indent=2) + "\n")
        if state is not None:
            say(f"resuming {out_dir} from {state.path.name} at step {step}")
            if step >= config.steps:
                say(f"the run is already at step {step} of {config.steps}: nothing to train (raise --steps to continue)")

    def checkpoint() -> None:
        rng = {name: ranks.gather_cpu(g.get_state()) for name, g in generators.items()}
        if not ranks.is_main:
            return
        train_meta = {"step": step, "splits": splits, "images_seen": images_seen, "world_size": ranks.world_size,
                      "config": dataclasses.asdict(config), "dataset": dataset_info, "scaler": scaler.state_dict()}
        write_run_checkpoint(out_dir, model, optimizer, rng, train_meta)
        model.eval()
        save_sample_grid(model, out_dir / "samples" / f"step_{step:07d}.png", range(config.sample_seeds))
        model.train()
        plot_run(run_log.read(), out_dir / "training.png", [ddl.k for ddl in model.ddls()])

    bar = tqdm(total=config.steps, initial=step, disable=not (progress and ranks.is_main), unit="step",
               dynamic_ncols=True, desc=out_dir.name)
    loss_sum = torch.zeros((), device=ranks.device)
    interval_steps, interval_splits, interval_start = 0, 0, time.perf_counter()
    run_start = time.perf_counter()
    stopped_early = False
    with _StopRequest(active=ranks.world_size == 1) as stop:
        while step < config.steps:
            batch = next(batches).to(ranks.device, non_blocking=True)
            loss = train_step(model, optimizer, batch, config.chain_dropout, generators["dropout"], ranks, scaler,
                              autocast)
            made = usage_step(model, optimizer, config.split_and_prune, ranks)
            step += 1
            splits += made
            interval_splits += made
            images_seen += config.batch
            loss_sum += loss.float()
            interval_steps += 1
            bar.update(1)

            at_log = step % config.log_every == 0 or step == config.steps
            out_of_time = max_seconds is not None and ranks.agree(time.perf_counter() - run_start > max_seconds)
            at_log = at_log or out_of_time
            if at_log:
                ranks.all_reduce(loss_sum)
                elapsed = time.perf_counter() - interval_start
                entry = {"step": step, "images_seen": images_seen,
                         "loss": float(loss_sum) / (interval_steps * ranks.world_size),
                         "images_per_s": interval_steps * config.batch / elapsed,
                         "splits": splits, "splits_interval": interval_splits,
                         "usage_entropy": [ddl.usage.entropy() for ddl in model.ddls()]}
                if ranks.is_main:
                    run_log.append(entry)
                bar.set_postfix(loss=f"{entry['loss']:.4f}", img_s=f"{entry['images_per_s']:.0f}", splits=splits)
                loss_sum.zero_()
                interval_steps, interval_splits = 0, 0
            stopped_early = out_of_time or stop.requested
            if stopped_early or step == config.steps or (config.checkpoint_every and step % config.checkpoint_every == 0):
                written = time.perf_counter()
                checkpoint()
                interval_start += time.perf_counter() - written  # images/s counts training only
            if at_log:
                interval_start = time.perf_counter()
            if stopped_early:
                break
    bar.close()
    if stopped_early and ranks.is_main:
        why = "out of time" if not stop.requested else "interrupted"
        say(f"{why} at step {step}: checkpoint saved in {out_dir / LAST}; continue with --resume")
    if stop.requested:
        raise KeyboardInterrupt
    return TrainResult(model, optimizer, step, splits, out_dir, config, ranks.rank, stopped_early)

