"""Named model presets: what a generator looks like for a given image size, by what it is for.

* ``cpu`` -- the default: a single-shot generator sized for a few minutes to an
  hour on a laptop CPU (wide at low resolution, where it is cheap; narrow at
  full resolution, where every channel costs the most), with the previous image
  clamped into the pixel range (``clamp``, see :mod:`ddn.training.ddl`).
* ``cifar10`` -- the official single-shot capacity schedule as the paper's
  CIFAR-10 run used it: 256 channels, 1, 2, 4, 8, 16, 32 blocks per scale
  (63 DDLs at 32x32), K = 64 (the published run's ``--max-outputk=64``; the
  schedule's uncapped K is 512 for RGB and 1024 for gray). For GPUs.
* ``mnist-recurrence`` -- the official MNIST example: one small U-Net block
  (base 32 channels) and one DDL with K = 64 applied 10 times, no learning residual.
* ``tiny`` -- a few thousand parameters, for tests and smoke runs.

Every preset works at any power-of-two size; per-scale values are looked up by
resolution, and scales past a preset's table take its last entry.
"""
from __future__ import annotations

import math
from typing import Any

PRESETS = ("cpu", "cifar10", "mnist-recurrence", "tiny")


def _by_resolution(table: list[int], scales: int) -> list[int]:
    """Per-scale values for resolutions 1, 2, 4, ...: the table, then its last entry repeated."""
    return [table[min(s, len(table) - 1)] for s in range(scales)]


def preset_config(name: str, image_size: int, image_channels: int, **overrides: Any) -> dict[str, Any]:
    """The generator config (for :func:`~ddn.training.networks.build_generator`) of preset ``name``.

    ``overrides`` replace the preset's values (e.g. ``k=32``, ``channels=64``,
    ``iterations=4``); for the recurrence preset ``channels`` is the U-Net's base;
    ``max_blocks`` caps the blocks per scale of single-shot presets.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    if image_size < 1 or image_size & (image_size - 1):
        raise ValueError(f"image size must be a power of two, got {image_size}")
    scales = int(math.log2(image_size)) + 1
    max_blocks = overrides.pop("max_blocks", None)
    base: dict[str, Any] = dict(image_size=image_size, image_channels=image_channels)
    if name == "mnist-recurrence":
        config = dict(kind="recurrence", **base, base=32, iterations=10, k=64, residual=False)
    elif name == "cifar10":
        config = dict(kind="single_shot", **base, channels=256, blocks=[min(2 ** s, 32) for s in range(scales)],
                      k=64, residual=True)
    elif name == "cpu":
        config = dict(kind="single_shot", **base,
                      channels=_by_resolution([128, 128, 128, 64, 32, 16], scales),
                      blocks=_by_resolution([1, 2, 4, 4, 4, 2], scales), k=64, residual=True, clamp=True)
    else:  # tiny
        config = dict(kind="single_shot", **base, channels=16, blocks=1, k=8, residual=True, clamp=True)
    if config["kind"] == "recurrence" and "channels" in overrides:
        overrides["base"] = overrides.pop("channels")
    if config["kind"] == "single_shot" and "iterations" in overrides:
        raise ValueError("iterations applies to recurrence presets only")
    config.update(overrides)
    if config["kind"] == "single_shot":  # per-scale lists, as the model stores its config
        for key in ("channels", "blocks", "k"):
            if isinstance(config[key], int):
                config[key] = [config[key]] * scales
        if max_blocks is not None:
            config["blocks"] = [min(b, max_blocks) for b in config["blocks"]]
    elif max_blocks is not None:
        raise ValueError("max_blocks applies to single-shot presets only")
    return config
