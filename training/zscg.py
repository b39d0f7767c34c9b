"""Zero-shot conditional generation from a checkpoint: super-resolution, colorization, inpainting, denoising.

No retraining: at every layer the guided sampler keeps the candidate that best
fits the condition (see :mod:`guidance`). :func:`generate_conditional` is the
API; ``ddn-generate --checkpoint ... --condition ...`` runs it through
:mod:`zscg_cli`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ddn.images import load_png, save_grid, save_png, to_float

from .checkpoint import load_generator
from .guidance import Colorization, Condition, Inpainting, SuperResolution, TargetCondition
from .networks import DDNGenerator
from .run_outputs import grid_scale, images_to_uint8
from .zscg_cli import CONDITIONS, SELECTIONS

BATCH = 64  # samples per guided pass
GRID_RESULTS = 63  # with the condition, an 8 x 8 grid


def _as_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, C] -> float [1, C, H, W] in [-1, 1]."""
    return torch.from_numpy(to_float(pixels)).permute(2, 0, 1).unsqueeze(0).contiguous()


def _load_square(path: str | Path, channels: int, what: str) -> np.ndarray:
    pixels = load_png(path, channels=channels)
    h, w = pixels.shape[:2]
    if h != w:
        raise ValueError(f"{what} {path} is {w}x{h}; it must be square")
    return pixels


def build_condition(model: DDNGenerator, condition: str, input_path: str | Path,
                    mask_path: str | Path | None = None) -> tuple[Condition, torch.Tensor]:
    """The condition for one input image, and a [1, C, S, S] picture of it for the grid."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {', '.join(CONDITIONS)}, got {condition!r}")
    if mask_path is not None and condition != "inpaint":
        raise ValueError("--mask only applies to --condition inpaint")
    c, size = model.image_channels, model.image_size

    def full_size(pixels: np.ndarray, what: str, path) -> torch.Tensor:
        if pixels.shape[0] != size:
            raise ValueError(f"{what} {path} is {pixels.shape[0]}x{pixels.shape[0]}, "
                             f"but the model makes {size}x{size} images")
        return _as_tensor(pixels)

    if condition == "superres":
        low = _load_square(input_path, c, "input")
        side = low.shape[0]
        if side >= size or size % side or side & (side - 1):
            raise ValueError(f"input {input_path} is {side}x{side}; super-resolution needs a power-of-two size "
                             f"smaller than the model's {size}x{size} (e.g. {size // 2} or {size // 4})")
        low_res = _as_tensor(low)
        return SuperResolution(low_res), torch.nn.functional.interpolate(low_res, size=(size, size), mode="nearest")
    if condition == "colorize":
        if c != 3:
            raise ValueError(f"colorization needs an RGB model; this checkpoint makes {c}-channel images")
        gray = full_size(_load_square(input_path, 1, "input"), "input", input_path)
        return Colorization(gray), gray.expand(1, 3, size, size)
    if condition == "inpaint":
        if mask_path is None:
            raise ValueError("--condition inpaint needs --mask (white = keep, black = fill in)")
        image = full_size(_load_square(input_path, c, "input"), "input", input_path)
        mask = (full_size(_load_square(mask_path, 1, "mask"), "mask", mask_path) > 0).float()
        return Inpainting(image, mask), image * mask  # unknown pixels shown as mid-gray
    image = full_size(_load_square(input_path, c, "input"), "input", input_path)
    return TargetCondition(image), image


def _repeat(condition: Condition, n: int) -> Condition:
    """The same condition for a batch of n samples."""
    if isinstance(condition, SuperResolution):
        return SuperResolution(condition.low_res.expand(n, -1, -1, -1))
    if isinstance(condition, Colorization):
        return Colorization(condition.gray.expand(n, -1, -1, -1))
    if isinstance(condition, Inpainting):
        return Inpainting(condition.image.expand(n, -1, -1, -1), condition.mask.expand(n, -1, -1, -1))
    return TargetCondition(condition.target.expand(n, -1, -1, -1))


def generate_conditional(checkpoint: str | Path, condition: str, input_path: str | Path,
                         mask_path: str | Path | None = None, selection: str = "top2", n: int = 8,
                         out_dir: str | Path = "zscg", seed: int = 0) -> int:
    """Write ``n`` samples that fit the condition as result_000.png ..., plus condition.png and grid.png.

    ``selection`` "top1" keeps the best candidate per layer (deterministic, so
    all n are equal); "top2" draws between the two best (seeded by ``seed``).
    Samples are made ``BATCH`` at a time, so memory stays the same for any n;
    the grid (written once it is full, or at the end) shows the condition and
    the first ``GRID_RESULTS`` results. Returns how many results were written.
    Raises ValueError / CheckpointError with a one-line message.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be top1 or top2, got {selection!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    model = load_generator(checkpoint)
    single, preview = build_condition(model, condition, input_path, mask_path)
    generator = torch.Generator().manual_seed(seed)

    out_dir = Path(out_dir)
    preview_pixels = images_to_uint8(preview)
    save_png(out_dir / "condition.png", preview_pixels[0])
    shown: list[np.ndarray] = []
    for start in range(0, n, BATCH):
        size = min(BATCH, n - start)
        pixels = images_to_uint8(model.guided_sample(_repeat(single, size), selection=selection, generator=generator))
        for i, image in enumerate(pixels, start):
            save_png(out_dir / f"result_{i:03d}.png", image)
        if len(shown) < GRID_RESULTS:
            shown.extend(pixels[:GRID_RESULTS - len(shown)])
            if len(shown) == min(n, GRID_RESULTS):
                save_grid(out_dir / "grid.png", np.concatenate([preview_pixels, np.stack(shown)]),
                          ncols=min(len(shown) + 1, 9), scale=grid_scale(model.image_size))
    return n
