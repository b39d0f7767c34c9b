"""The training loop: guided-sampler loss, Adam, split-and-prune, weight average and checkpoints, with no framework.
Every random draw comes from an explicit RNG, so a run is a pure function of its config and resume lands on the same
bits; under torchrun, DDP keeps the replicas identical (docs/training.md).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from ddn.progress import on_terminal, progress_line, utc_timestamp

from .allocator import retain_freed_memory
from .datasets import batch_stream, load_images
from .distributed import Ranks, TrainingLoss
from .lr_schedule import RunClock, lr_factor
from .networks import DDNGenerator, build_generator
from .presets import preset_config
from .run_outputs import RunLog, plot_run, save_sample_grid
from .split_and_prune import split_and_prune_
from .stop_request import StopRequest
from .train_state import LAST, PREVIOUS, RunState, find_resumable, load_optimizer_state, write_run_checkpoint
from .weight_average import WeightAverage

RNG_STREAMS = ("data", "dropout")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    """Everything that defines a run. Stored in every checkpoint; ``resume`` continues it."""

    dataset: str = "digits"
    image_size: int | None = None  # None: the dataset's own size
    preset: str = "cpu"  # see ddn.training.presets
    channels: int | None = None  # None: the preset's; single-shot: every scale's, recurrence: the U-Net's base
    k: int | None = None  # None: the preset's branches per DDL
    max_blocks: int | None = None  # single-shot: cap on the blocks per scale
    iterations: int | None = None  # recurrence: how often the block repeats (None: the preset's)
    steps: int = 2000
    batch: int = 64  # global: each of N ranks takes batch / N
    lr: float = 2e-3
    lr_decay: float = 0.8  # the LR falls linearly to 0 over this last share of the run (steps or --minutes)
    beta1: float = 0.9
    beta2: float = 0.999
    chain_dropout: float = 0.1
    split_and_prune: bool = True
    ema_halflife_kimg: float = 500.0  # weight average's half-life in thousands of images; 0: no average
    ema_rampup: float = 0.05  # ... at most this share of the images seen so far (0: no ramp-up)
    checkpoint_every: int = 500  # 0: only at the end
    log_every: int = 50
    sample_seeds: int = 64  # the grid shows seeds 0 .. sample_seeds-1
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda
    precision: str = "fp32"  # fp32, bf16 or fp16 autocast

    def weight_average(self, model: DDNGenerator, resumed: DDNGenerator | None = None) -> WeightAverage | None:
        """The run's weight average of ``model`` (continuing ``resumed``), or None when it keeps none."""
        if self.ema_halflife_kimg <= 0:
            return None
        return WeightAverage(model, self.ema_halflife_kimg * 1000, self.ema_rampup, resumed)

    def optimizer(self, model: DDNGenerator) -> torch.optim.Adam:
        """The run's Adam over ``model``'s parameters, fused: one kernel for every parameter (2.2 ms a step for the
        `cpu` preset on 2 threads here, against 5.9 ms for the per-tensor kernels).
        """
        return torch.optim.Adam(model.parameters(), lr=self.lr, betas=(self.beta1, self.beta2), fused=True)

    def model_config(self, image_channels: int, image_size: int) -> dict[str, Any]:
        overrides = {name: value for name, value in (("k", self.k), ("max_blocks", self.max_blocks),
                                                      ("iterations", self.iterations), ("channels", self.channels))
                     if value is not None}
        return preset_config(self.preset, image_size, image_channels, **overrides)


class ConfigError(ValueError):
    """Options the run cannot use together (or with its checkpoint); a usage error on the command line."""


# Options a resumed run may change; everything else must match the checkpoint.
ADJUSTABLE_ON_RESUME = {"steps", "checkpoint_every", "log_every", "sample_seeds", "device", "precision"}


def resume_config(stored: dict[str, Any], given: TrainConfig, explicit: set[str] | None) -> TrainConfig:
    """The stored config with the options the user gave now applied.

    ``explicit`` names the options the user set (the CLI knows); None means
    "every field of ``given``". Changing a fixed option raises ConfigError.
    """
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    # Runs from before the weight average and the LR decay existed had neither.
    stored = {"ema_halflife_kimg": 0.0, "lr_decay": 0.0, **stored}
    config = TrainConfig(**{k: v for k, v in stored.items() if k in known})
    for name in sorted(known if explicit is None else explicit & known):
        old, new = getattr(config, name), getattr(given, name)
        if old == new:
            continue
        if name not in ADJUSTABLE_ON_RESUME:
            raise ConfigError(f"--{name.replace('_', '-')} cannot change on resume (checkpoint has {old!r}, got {new!r}); "
                              f"only {', '.join(sorted(ADJUSTABLE_ON_RESUME))} can")
        setattr(config, name, new)
    return config


def stream_seed(seed: int, rank: int, stream: str, restart_step: int = 0) -> int:
    """A 64-bit seed per (run seed, rank, stream), independent across all three."""
    entropy = [seed, rank, RNG_STREAMS.index(stream), restart_step]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def autocast_for(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError("fp16 mixed precision needs --device cuda (use bf16 on CPU)")
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


# -- one step -------------------------------------------------------------------------

def train_step(training_loss: TrainingLoss, optimizer: torch.optim.Optimizer, batch: torch.Tensor,
               chain_dropout: float, rng: torch.Generator, scaler: torch.amp.GradScaler,
               autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> torch.Tensor:
    """Loss, backward (averaging gradients over ranks, see Ranks.training_loss) and the Adam update.

    Returns the detached loss.
    """
    with autocast():
        loss = training_loss(batch, chain_dropout, rng)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def usage_step(model: DDNGenerator, optimizer: torch.optim.Optimizer, enabled: bool, ranks: Ranks,
               average: WeightAverage | None = None) -> int:
    """Fold this step's (rank-summed) usage into the statistics; split and prune when enabled."""
    all_reduce = ranks.all_reduce if ranks.world_size > 1 else None
    if enabled:
        return split_and_prune_(model.ddls(), optimizer, all_reduce, average.shadow_of if average else None)
    for ddl in model.ddls():
        ddl.usage.fold_step(all_reduce)
    return 0


# -- the run --------------------------------------------------------------------------

@dataclass
class TrainResult:
    model: DDNGenerator  # the weights the optimizer steps
    sampled_model: DDNGenerator  # what the run samples and its checkpoint exports: the weight average, if any
    optimizer: torch.optim.Optimizer
    step: int
    splits: int
    out_dir: Path
    config: TrainConfig
    rank: int = 0
    stopped_early: bool = False  # interrupted or out of time; the checkpoint is there to resume


def train(config: TrainConfig, out_dir: str | Path, resume: bool = False, explicit: set[str] | None = None,
          progress: bool = True, max_seconds: float | None = None,
          log: Callable[[str], None] = lambda message: tqdm.write(message, file=sys.stderr)) -> TrainResult:
    """Train (or, with ``resume``, continue) the run in ``out_dir``; ``explicit`` names the options that override a
    resumed config, ``max_seconds`` stops early with a checkpoint, and ``progress`` draws a bar on a terminal
    (otherwise timestamped lines).
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
        say = log if ranks.is_main else (lambda message: None)
        run = _start(config, out_dir, state, ranks, say)
        result = _train_until_done(run, progress, max_seconds, say)
        finished = True
        return result
    finally:
        ranks.close(finished)


@dataclass
class _Run:
    """A run in progress on this rank: what a step changes and what a checkpoint keeps."""

    config: TrainConfig
    out_dir: Path
    ranks: Ranks
    model: DDNGenerator
    training_loss: TrainingLoss  # model.loss, through DDP on several ranks
    optimizer: torch.optim.Optimizer
    average: WeightAverage | None
    scaler: torch.amp.GradScaler
    autocast: Callable[[], contextlib.AbstractContextManager]
    rngs: dict[str, torch.Generator]  # one per RNG stream
    batches: Iterator[torch.Tensor]
    dataset_info: dict[str, Any]
    run_log: RunLog
    step: int = 0
    splits: int = 0
    images_seen: int = 0
    clock: RunClock = field(default_factory=RunClock)  # training seconds, this invocation's included

    @property
    def sampled_model(self) -> DDNGenerator:
        """The model the run samples and exports: the weight average, or the trained weights without one."""
        return self.model if self.average is None else self.average.model

    def train_one_step(self, progress: float) -> tuple[torch.Tensor, int]:
        """One optimizer step at ``progress`` through the run (which sets the LR), the split-and-prune and the
        weight average after it; returns (detached loss, splits).
        """
        loss = self.descend(progress)
        made = self.split_and_prune()
        self.update_average()
        return loss, made

    # The step's three parts, apart so that benchmarks/train_speed.py can time each.
    def descend(self, progress: float) -> torch.Tensor:
        """The optimizer step on the next batch, at the learning rate for ``progress``; the detached loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * lr_factor(progress, self.config.lr_decay)
        batch = next(self.batches).to(self.ranks.device, non_blocking=True)
        loss = train_step(self.training_loss, self.optimizer, batch, self.config.chain_dropout,
                          self.rngs["dropout"], self.scaler, self.autocast)
        self.step += 1
        self.images_seen += self.config.batch
        return loss

    def split_and_prune(self) -> int:
        """Fold the step's branch usage in, and split and prune where it is due; how many splits."""
        made = usage_step(self.model, self.optimizer, self.config.split_and_prune, self.ranks, self.average)
        self.splits += made
        return made

    def update_average(self) -> None:
        """Move the weight average (if the run keeps one) toward the weights just stepped."""
        if self.average is not None:
            self.average.update(self.images_seen, self.config.batch)

    def checkpoint(self) -> None:
        """Checkpoint, sample grid and training plot (written by rank 0; every rank gives its RNG states)."""
        rng = {name: self.ranks.gather_cpu(g.get_state()) for name, g in self.rngs.items()}
        if not self.ranks.is_main:
            return
        train_meta = {"step": self.step, "splits": self.splits, "images_seen": self.images_seen,
                      "world_size": self.ranks.world_size, "config": dataclasses.asdict(self.config),
                      "dataset": self.dataset_info, "scaler": self.scaler.state_dict()}
        if self.clock.timed:  # only a time-budgeted run needs its clock; a step-bounded one stays byte-reproducible
            train_meta["train_seconds"] = round(self.clock.seconds(), 3)
        write_run_checkpoint(self.out_dir, self.model, self.optimizer, rng, train_meta,
                             None if self.average is None else self.average.model)
        self.model.eval()
        save_sample_grid(self.sampled_model, self.out_dir / "samples" / f"step_{self.step:07d}.png",
                         range(self.config.sample_seeds))
        self.model.train()
        plot_run(self.run_log.read(), self.out_dir / "training.png", [ddl.k for ddl in self.model.ddls()])


def _start(config: TrainConfig, out_dir: Path, state: RunState | None, ranks: Ranks,
           say: Callable[[str], None]) -> _Run:
    """A new run, or the one ``state`` was saved from, ready for its next step; rank 0 writes config.json."""
    for note in state.notes if state else []:
        say(f"warning: {note}")
    if config.batch % ranks.world_size:
        raise ConfigError(f"--batch {config.batch} does not split evenly over {ranks.world_size} ranks")
    if config.log_every < 1:
        raise ConfigError(f"--log-every must be at least 1, got {config.log_every}")
    if not 0 <= config.lr_decay <= 1:
        raise ConfigError(f"--lr-decay is a share of the run in [0, 1], got {config.lr_decay}")
    if config.ema_halflife_kimg < 0 or config.ema_rampup < 0:
        raise ConfigError(f"--ema-halflife-kimg and --ema-rampup must be non-negative, "
                         f"got {config.ema_halflife_kimg} and {config.ema_rampup}")
    autocast = autocast_for(ranks.device, config.precision)
    retain_freed_memory()  # every step frees and asks for the same blocks: no page faults (training/allocator.py)

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
    training_loss = ranks.training_loss(model)  # on several ranks, every rank now holds rank 0's weights
    resumed = None if state is None or state.average is None else state.average.to(ranks.device)
    average = config.weight_average(model, resumed)
    optimizer = config.optimizer(model)
    scaler = torch.amp.GradScaler(ranks.device.type, enabled=config.precision == "fp16")
    rngs = {name: torch.Generator().manual_seed(stream_seed(config.seed, ranks.rank, name)) for name in RNG_STREAMS}
    batches = batch_stream(shard, config.batch // ranks.world_size, rngs["data"])
    run = _Run(config, out_dir, ranks, model, training_loss, optimizer, average, scaler, autocast, rngs, batches,
               dataset_info, RunLog(out_dir / "log.jsonl"))
    if state is not None:
        _resume(run, state, shard, say)

    if ranks.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        run.run_log.truncate_after(run.step)
        (out_dir / "config.json").write_text(json.dumps(
            {"train": dataclasses.asdict(config), "model": model.config(), "world_size": ranks.world_size}, indent=2) + "\n")
        if state is not None:
            say(f"resuming {out_dir} from {state.path.name} at step {run.step}")
            if run.step >= config.steps:
                say(f"the run is already at step {run.step} of {config.steps}: nothing to train (raise --steps to continue)")
    return run


def _resume(run: _Run, state: RunState, shard: torch.Tensor, say: Callable[[str], None]) -> None:
    """Continue where ``state`` stopped: counters, Adam's moments, the loss scale and the random streams."""
    config, ranks = run.config, run.ranks
    run.step, run.splits, run.images_seen = state.train["step"], state.train["splits"], state.train["images_seen"]
    run.clock = RunClock(seconds_before=state.train.get("train_seconds", 0.0))
    load_optimizer_state(run.optimizer, state.optimizer_state)
    if state.train.get("scaler"):
        run.scaler.load_state_dict(state.train["scaler"])
    if state.train["world_size"] == ranks.world_size:
        run.rngs["dropout"].set_state(state.rng["dropout"][ranks.rank])
        for _ in range(run.step):  # replay the data order up to where the run stopped
            next(run.batches)
        if not torch.equal(run.rngs["data"].get_state(), state.rng["data"][ranks.rank]):
            say("warning: the data order differs from the interrupted run's (dataset changed?)")
    else:
        say(f"warning: the checkpoint was written by {state.train['world_size']} rank(s), now {ranks.world_size}: "
            "continuing with fresh data order and dropout streams (not bitwise reproducible)")
        for name in RNG_STREAMS:
            run.rngs[name].manual_seed(stream_seed(config.seed, ranks.rank, name, restart_step=run.step))
        run.batches = batch_stream(shard, config.batch // ranks.world_size, run.rngs["data"])


@dataclass
class _Interval:
    """Loss and speed since the last log line (``start`` leaves out the time spent writing checkpoints)."""

    loss_sum: torch.Tensor
    steps: int = 0
    splits: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, loss: torch.Tensor, splits: int) -> None:
        self.loss_sum += loss.float()
        self.steps += 1
        self.splits += splits

    def log_entry(self, run: _Run) -> dict[str, Any]:
        """This interval's log line (loss averaged over steps and ranks); counting starts afresh."""
        run.ranks.all_reduce(self.loss_sum)
        elapsed = time.perf_counter() - self.start
        entry = {"time": utc_timestamp(), "step": run.step, "images_seen": run.images_seen,
                 "loss": float(self.loss_sum) / (self.steps * run.ranks.world_size),
                 "images_per_s": self.steps * run.config.batch / elapsed,
                 "lr": run.optimizer.param_groups[0]["lr"],
                 "splits": run.splits, "splits_interval": self.splits,
                 "usage_entropy": [ddl.usage.entropy() for ddl in run.model.ddls()]}
        self.loss_sum.zero_()
        self.steps, self.splits = 0, 0
        return entry


def _train_until_done(run: _Run, progress: bool, max_seconds: float | None, say: Callable[[str], None]) -> TrainResult:
    """Step to ``config.steps``, logging and checkpointing on schedule.

    Interrupted (Ctrl-C, SIGTERM) or out of ``max_seconds``, the run finishes its
    step, writes a checkpoint and stops early.
    """
    config, ranks = run.config, run.ranks
    draw_bar = progress and ranks.is_main and on_terminal()  # a redrawn bar would garble a piped log
    bar = tqdm(total=config.steps, initial=run.step, disable=not draw_bar, unit="step", dynamic_ncols=True,
               desc=run.out_dir.name)
    interval = _Interval(torch.zeros((), device=ranks.device))
    run.clock = RunClock(run.clock.seconds_before, max_seconds)
    # Every rank takes the furthest rank's share of the time budget, so the LR and the stop agree; a share
    # over 1 is exactly "this invocation ran past max_seconds".
    time_share = ranks.maximum(run.clock.time_progress())
    stopped_early = False
    with StopRequest(active=ranks.world_size == 1) as stop:
        while run.step < config.steps:
            loss, made = run.train_one_step(max(run.step / config.steps, time_share))
            interval.add(loss, made)
            bar.update(1)

            if max_seconds is not None:
                time_share = ranks.maximum(run.clock.time_progress())
            out_of_time = time_share > 1
            at_log = out_of_time or run.step % config.log_every == 0 or run.step == config.steps
            if at_log:
                entry = interval.log_entry(run)
                if ranks.is_main:
                    run.run_log.append(entry)
                    if not draw_bar:
                        progress_line(f"{run.out_dir.name} step {run.step}/{config.steps} loss {entry['loss']:.4f} "
                                      f"{entry['images_per_s']:.0f} img/s splits {run.splits}")
                bar.set_postfix(loss=f"{entry['loss']:.4f}", img_s=f"{entry['images_per_s']:.0f}", splits=run.splits)
            stopped_early = out_of_time or stop.requested
            at_checkpoint = config.checkpoint_every and run.step % config.checkpoint_every == 0
            if stopped_early or run.step == config.steps or at_checkpoint:
                written = time.perf_counter()
                run.checkpoint()
                interval.start += time.perf_counter() - written  # images/s counts training only
            if at_log:
                interval.start = time.perf_counter()
            if stopped_early:
                break
    bar.close()
    if stopped_early and ranks.is_main:
        why = "out of time" if not stop.requested else "interrupted"
        say(f"{why} at step {run.step}: checkpoint saved in {run.out_dir / LAST}; continue with --resume")
    if stop.requested:
        raise KeyboardInterrupt
    return TrainResult(run.model, run.sampled_model, run.optimizer, run.step, run.splits, run.out_dir, config, ranks.rank,
                       stopped_early)
