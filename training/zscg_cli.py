"""``python -m ddn.training.zscg_cli``: zero-shot conditional generation from a checkpoint in PyTorch, with the same
condition options as ``ddn-generate --condition`` (:mod:`ddn.condition_cli`).
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ddn.cli import command
from ddn.condition_cli import condition_files, condition_options

from .zscg import SELECTIONS, generate_conditional

# torch.Generator.manual_seed takes any 64-bit unsigned seed.
SEED_RANGE = click.IntRange(0, 2**64 - 1)


@command("conditional")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="a ddn-train checkpoint (.safetensors)")
@condition_options(required=True)
@click.option("--selection", type=click.Choice(SELECTIONS), default="top2",
              help="top1: best candidate per layer (deterministic, all N equal); top2: random among the best two")
@click.option("--n", type=click.IntRange(min=1), default=8, help="samples to generate")
@click.option("--seed", type=SEED_RANGE, default=0, help="seed of the top2 draws")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("zscg"),
              help="output folder")
def conditional(checkpoint: Path, condition: str, selection: str, n: int, seed: int, out_dir: Path,
                **paths: Path | None) -> None:
    """Zero-shot conditional generation with a trained DDN (no retraining)."""
    files = condition_files(condition, paths)
    try:
        written = generate_conditional(checkpoint, condition, files, selection, n, out_dir, seed)
    except (ValueError, OSError) as exc:  # ConditionError and CheckpointError are ValueErrors
        raise click.ClickException(" ".join(str(exc).split())) from None
    click.echo(f"wrote {written} images and grid.png to {out_dir}", err=True)


if __name__ == "__main__":
    sys.exit(conditional())
