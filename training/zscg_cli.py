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
              help="The ddn-train checkpoint (.safetensors) to sample.")
@condition_options(required=True)
@click.option("--selection", type=click.Choice(SELECTIONS), default="top2",
              help="How each layer picks: top1 takes the best candidate (deterministic, all N equal), "
                   "top2 one of the best two at random.")
@click.option("--n", type=click.IntRange(min=1), default=8, help="Number of samples to generate.")
@click.option("--seed", type=SEED_RANGE, default=0, help="Seed of the top2 draws.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("zscg"),
              help="Folder the samples are written to.")
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
