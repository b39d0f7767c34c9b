"""Zero-shot conditional generation from a checkpoint in PyTorch, the research path: the registry's conditions, plus
what the exported top-1 graphs lack (top-2 draws, super-resolution inputs of any power-of-two size).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ddn.conditions import condition_spec
from ddn.images import save_grid, save_png
from ddn.repository_contract import GraphLayout

from .checkpoint import load_generator
from .guidance import condition_from_inputs
from .networks import DDNGenerator
from .run_outputs import grid_scale, images_to_uint8

BATCH = 64  # samples per guided pass
GRID_RESULTS = 63  # with the condition, an 8 x 8 grid
SELECTIONS = ("top1", "top2")


def model_layout(model: DDNGenerator, condition: str) -> GraphLayout:
    """The condition's layout for ``model`` with no super-resolution factor: any power-of-two low-res side fits."""
    return GraphLayout(condition, model.num_layers, tuple(model.branch_counts), model.image_size,
                       model.image_channels)


def preview(inputs: Mapping[str, np.ndarray], layout: GraphLayout) -> np.ndarray:
    """The condition's first input at the model's size and channels (nearest), uint8 [H, W, C]: the grid's first tile."""
    first = next(iter(inputs.values()))
    scale = layout.image_size // first.shape[0]
    pixels = first.repeat(scale, axis=0).repeat(scale, axis=1)
    return np.repeat(pixels, layout.image_channels // pixels.shape[2], axis=2)


def generate_conditional(checkpoint: str | Path, condition: str, files: Mapping[str, str | Path],
                         selection: str = "top2", n: int = 8, out_dir: str | Path = "zscg", seed: int = 0) -> int:
    """Write ``n`` samples that fit the condition (result_000.png ..., condition.png, grid.png), ``BATCH`` at a time so
    memory is the same for any n; "top2" draws are seeded by ``seed``. Returns the count; a one-line ValueError on
    bad input.
    """
    spec = condition_spec(condition)
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be top1 or top2, got {selection!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    model = load_generator(checkpoint)
    layout = model_layout(model, condition)
    inputs = spec.read_files(layout, files)
    # Copied: the arrays PIL gives are read-only, torch tensors over them would not be.
    wire = {name: torch.from_numpy(pixels.copy()).unsqueeze(0) for name, pixels in inputs.items()}
    rng = torch.Generator().manual_seed(seed)

    out_dir = Path(out_dir)
    condition_pixels = preview(inputs, layout)
    save_png(out_dir / "condition.png", condition_pixels)
    shown: list[np.ndarray] = []
    for start in range(0, n, BATCH):
        size = min(BATCH, n - start)
        batch = condition_from_inputs(condition, {name: x.expand(size, -1, -1, -1) for name, x in wire.items()})
        pixels = images_to_uint8(model.guided_sample(batch, selection=selection, rng=rng))
        for i, image in enumerate(pixels, start):
            save_png(out_dir / f"result_{i:03d}.png", image)
        if len(shown) < GRID_RESULTS:
            shown.extend(pixels[:GRID_RESULTS - len(shown)])
            if len(shown) == min(n, GRID_RESULTS):
                save_grid(out_dir / "grid.png", np.stack([condition_pixels, *shown]),
                          ncols=min(len(shown) + 1, 9), scale=grid_scale(model.image_size))
    return n
