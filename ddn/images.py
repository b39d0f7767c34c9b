"""Pixels in and out: float images in [-1, 1] <-> uint8 HWC arrays <-> PNG files.

numpy and PIL only (no torch), so serving clients can use it. Layout is
channels-last everywhere here: one image is [H, W, C], a batch is [B, H, W, C].
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [-1, 1] (any shape) to uint8 in [0, 255], rounding to nearest, clipping outside."""
    scaled = (np.asarray(images, dtype=np.float32) + 1.0) * 127.5
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [-1, 1] (the inverse of :func:`to_uint8` up to rounding)."""
    return np.asarray(images, dtype=np.float32) / 127.5 - 1.0


def _as_hwc(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got dtype {image.dtype}; convert with to_uint8 first")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an image [H, W, C] with C in 1, 3, 4, got shape {list(image.shape)}")
    return image


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write one uint8 image [H, W, C] (or [H, W]) as PNG; creates the parent folder."""
    image = _as_hwc(image)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(path, format="PNG")
    return path


def make_grid(images: np.ndarray, ncols: int | None = None, padding: int = 1, scale: int = 1) -> np.ndarray:
    """Tile uint8 images [B, H, W, C] into one [rows*(H+p)+p, cols*(W+p)+p, C] image on a black background.

    ``ncols`` defaults to the smallest square that fits; ``scale`` repeats pixels
    (nearest) so that tiny images such as 8x8 digits stay visible.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected a batch [B, H, W, C], got shape {list(images.shape)}")
    images = np.stack([_as_hwc(im) for im in images]) if len(images) else images
    b, h, w, c = images.shape
    if b == 0:
        raise ValueError("cannot make a grid of zero images")
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    ncols = max(1, min(ncols or math.ceil(math.sqrt(b)), b))
    nrows = math.ceil(b / ncols)
    grid = np.zeros((nrows * (h + padding) + padding, ncols * (w + padding) + padding, c), dtype=np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, ncols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top:top + h, left:left + w] = image
    return grid


def save_grid(path: str | Path, images: np.ndarray, ncols: int | None = None, padding: int = 1,
              scale: int = 1) -> Path:
    """Write uint8 images [B, H, W, C] as one PNG grid (see :func:`make_grid`)."""
    return save_png(path, make_grid(images, ncols, padding, scale))


def load_png(path: str | Path, channels: int | None = None) -> np.ndarray:
    """Read an image file as uint8 [H, W, C]: ``channels`` 1 or 3 converts, ``None`` keeps grayscale and makes
    everything else RGB; ValueError with the path when missing or unreadable.
    """
    path = Path(path)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels}")
    try:
        with Image.open(path) as im:
            im.load()
            if channels == 1 or (channels is None and im.mode in ("1", "L", "I", "I;16", "F")):
                im = im.convert("L")
            else:
                im = im.convert("RGB")
            array = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise ValueError(f"image not found: {path}") from None
    except (OSError, SyntaxError) as exc:  # PIL raises these for truncated or non-image files
        raise ValueError(f"cannot read image {path}: {exc}") from None
    return array[:, :, None] if array.ndim == 2 else array
