"""The command-line side of zero-shot conditional generation: its options, declared once.

``ddn-generate --checkpoint ... --condition ...`` and the ``conditional``
command both take :func:`condition_options` and run :func:`run_conditional`.
Importing this module needs click only, so ddn-generate stays torch-free until
a conditional run starts (:mod:`zscg` does the work).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

import click

CONDITIONS = ("superres", "colorize", "inpaint", "denoise")
SELECTIONS = ("top1", "top2")
# Seeds are what numpy's default_rng and torch.Generator.manual_seed both take: 64-bit unsigned.
SEED_RANGE = click.IntRange(0, 2**64 - 1)

Command = TypeVar("Command", bound=Callable)


def condition_options(required: bool) -> Callable[[Command], Command]:
    """Add --checkpoint, --condition, --input, --mask and --selection to a command.

    ``required`` False leaves the first three optional, for a command that
    runs a conditional generation only when they are given (ddn-generate).
    """
    options = [
        click.option("--checkpoint", required=required, type=click.Path(dir_okay=False, path_type=Path),
                     help="a ddn-train checkpoint (.safetensors) to generate from with a condition"),
        click.option("--condition", required=required, type=click.Choice(CONDITIONS),
                     help="superres: input is the low-res image; colorize: grayscale input; "
                          "inpaint: input + --mask; denoise: noisy input"),
        click.option("--input", "input_path", required=required, type=click.Path(dir_okay=False, path_type=Path),
                     help="the condition image (PNG or any format PIL reads)"),
        click.option("--mask", "mask_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="inpaint: white = keep the input's pixel, black = fill in"),
        click.option("--selection", type=click.Choice(SELECTIONS), default="top2",
                     help="top1: best candidate per layer (deterministic, all N equal); "
                          "top2: random among the best two"),
    ]

    def add(command: Command) -> Command:
        for option in reversed(options):
            command = option(command)
        return command

    return add


def run_conditional(checkpoint: Path, condition: str, input_path: Path, mask_path: Path | None, selection: str,
                    n: int, out_dir: Path, seed: int) -> None:
    """Write ``n`` results for a command; bad input is a one-line click error."""
    from .zscg import generate_conditional  # torch is imported here, not when ddn-generate starts

    try:
        written = generate_conditional(checkpoint, condition, input_path, mask_path, selection, n, out_dir, seed)
    except (ValueError, OSError) as exc:  # CheckpointError is a ValueError
        raise click.ClickException(" ".join(str(exc).split())) from None
    click.echo(f"wrote {written} images and grid.png to {out_dir}", err=True)


@click.command("conditional", context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@condition_options(required=True)
@click.option("--n", type=click.IntRange(min=1), default=8, help="samples to generate")
@click.option("--seed", type=SEED_RANGE, default=0, help="seed of the top2 draws")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("zscg"),
              help="output folder")
def conditional(checkpoint: Path, condition: str, input_path: Path, mask_path: Path | None, selection: str,
                n: int, seed: int, out_dir: Path) -> None:
    """Zero-shot conditional generation with a trained DDN (no retraining)."""
    run_conditional(checkpoint, condition, input_path, mask_path, selection, n, out_dir, seed)
