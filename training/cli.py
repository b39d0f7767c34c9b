"""``ddn-train``: train a DDN generator; with no arguments, a small one on scikit-learn's 8x8 digits.

Data-parallel: ``torchrun --nproc_per_node N $(which ddn-train) ...`` (gloo on
CPU, nccl on GPU); ``--batch`` is the global batch.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import click
import torch
from click.core import ParameterSource

from ddn.cli import CommandError, command, power_of_two

from .checkpoint import CheckpointError
from .presets import PRESETS
from .train_loop import ConfigError, TrainConfig, train
from .train_state import LAST, PREVIOUS

DEFAULTS = TrainConfig()


def _default_out(dataset: str, preset: str, resume: bool) -> Path:
    """runs/<dataset>-<preset>, or the first free runs/<dataset>-<preset>-<n> for a new run."""
    label = dataset if dataset == "digits" else (Path(dataset).stem or Path(dataset).name or "data")
    base = Path("runs") / f"{label}-{preset}"
    if resume:
        return base
    candidate, n = base, 1
    while (candidate / LAST).exists() or (candidate / PREVIOUS).exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


@command()
@click.option("--dataset", default=DEFAULTS.dataset,
              help='Training images: "digits" (scikit-learn, 8x8), an .npz file, an image folder or MNIST IDX files.')
@click.option("--image-size", type=int, default=None, callback=power_of_two, show_default=False,
              help="Resize images to this power of two.  [default: the dataset's size, padded up to a power of two]")
@click.option("--preset", type=click.Choice(PRESETS), default=DEFAULTS.preset,
              help="Model: cpu (sized for a CPU), cifar10 (the paper's CIFAR-10 model, for GPUs), "
                   "mnist-recurrence (the official MNIST U-Net, repeated) or tiny (tests).")
@click.option("--channels", type=click.IntRange(min=2), default=None,
              help="Override the preset's channels (every scale; recurrence: the U-Net's base).")
@click.option("--k", "-k", "k", type=click.IntRange(min=1), default=None, help="Override the preset's branches per DDL.")
@click.option("--max-blocks", type=click.IntRange(min=1), default=None,
              help="Single-shot presets: cap the blocks per scale.")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Recurrence: override how often the block repeats.")
@click.option("--steps", type=click.IntRange(min=1), default=DEFAULTS.steps, help="Total optimizer steps.")
@click.option("--images", type=click.IntRange(min=1), default=None, help="Total training images, instead of --steps.")
@click.option("--batch", type=click.IntRange(min=1), default=DEFAULTS.batch, help="Global batch size (split over ranks).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.lr, help="Adam learning rate.")
@click.option("--lr-decay", type=click.FloatRange(0, 1), default=DEFAULTS.lr_decay,
              help="Share of the run, at its end, over which the learning rate falls linearly to zero (the run ends "
                   "at --steps or --minutes, whichever comes first).")
@click.option("--beta1", type=click.FloatRange(0, 1, max_open=True), default=DEFAULTS.beta1, help="Adam beta1.")
@click.option("--beta2", type=click.FloatRange(0, 1, max_open=True), default=DEFAULTS.beta2, help="Adam beta2.")
@click.option("--chain-dropout", type=click.FloatRange(0, 1), default=DEFAULTS.chain_dropout,
              help="Probability that a layer takes random branches for the whole batch.")
@click.option("--split-and-prune/--no-split-and-prune", default=DEFAULTS.split_and_prune,
              help="Split over-used and prune under-used branches after every step.")
@click.option("--ema-halflife-kimg", type=click.FloatRange(min=0), default=DEFAULTS.ema_halflife_kimg,
              help="Half-life (thousands of images) of the weight average that is sampled and exported; 0: none.")
@click.option("--ema-rampup", type=click.FloatRange(min=0), default=DEFAULTS.ema_rampup,
              help="Cap the average's half-life at this share of the images seen so far; 0: no cap.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, show_default=False,
              help="Run folder.  [default: runs/<dataset>-<preset>, numbered if taken]")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=DEFAULTS.checkpoint_every,
              help="Steps between checkpoints (and sample grids); 0: only at the end.")
@click.option("--log-every", type=click.IntRange(min=1), default=DEFAULTS.log_every,
              help="Steps between entries of log.jsonl (and, off a terminal or with --no-progress, progress lines).")
@click.option("--sample-seeds", type=click.IntRange(min=1), default=DEFAULTS.sample_seeds,
              help="Samples in each grid (seeds 0..N-1).")
@click.option("--seed", type=int, default=DEFAULTS.seed, help="Seed of the initial weights, data order and dropout.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=DEFAULTS.device,
              help="Where to train (auto: CUDA if present).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=DEFAULTS.precision,
              help="Autocast dtype of the forward passes (fp16 with loss scaling, CUDA only).")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop (with a checkpoint) after this much wall time.")
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="CPU threads for torch (0: torch's default); 1 is often faster for small models on a busy machine.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its newest good checkpoint.")
@click.option("--progress/--no-progress", default=True,
              help="Draw a progress bar on a terminal (elsewhere, and without it, a timestamped line per --log-every).")
@click.pass_context
def main(ctx: click.Context, images: int | None, out: Path | None, minutes: float | None, threads: int,
         resume: bool, progress: bool, **options) -> None:
    """Train a Discrete Distribution Network generator (guided sampler, Adam, split-and-prune)."""
    explicit = {name for name in options
                if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}
    if images is not None:
        options["steps"] = math.ceil(images / options["batch"])
        explicit.add("steps")
    config = TrainConfig(**options)
    if threads:
        torch.set_num_threads(threads)
    if out is None:
        out = _default_out(config.dataset, config.preset, resume)
    try:
        result = train(config, out, resume=resume, explicit=explicit, progress=progress,
                       max_seconds=None if minutes is None else minutes * 60)
    except KeyboardInterrupt:
        sys.exit(130)
    except ConfigError as exc:
        raise click.UsageError(" ".join(str(exc).split()), ctx) from None
    except (ValueError, CheckpointError, OSError) as exc:
        raise CommandError(exc) from None
    if result.rank == 0:
        click.echo(f"{result.step} steps, {result.splits} splits; checkpoint: {result.out_dir / LAST}", err=True)


if __name__ == "__main__":  # torchrun --nproc_per_node N -m ddn.training.cli ...
    main()
