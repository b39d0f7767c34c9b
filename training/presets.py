"""Named model presets (cpu, cifar10, mnist-recurrence, tiny): a model config for any power-of-two image size, chosen
by what the run is for; per-scale values are looked up by resolution (docs/training.md).
"""
from __future__ import annotations

import math
from typing import Any

PRESETS = ("cpu", "cifar10", "mnist-recurrence", "tiny")


def _by_resolution(table: list[int], scales: int) -> list[int]:
    """Per-scale values for resolutions 1, 2, 4, ...: the table, then its last entry repeated."""
    return [table[min(s, len(table) - 1)] for s in range(scales)]


def preset_config(name: str, image_size: int, image_channels: int, **overrides: Any) -> dict[str, Any]:
    """The model config (for :func:`~ddn.training.networks.build_generator`) of preset ``name``, ``overrides``
    replacing its values (``max_blocks`` caps single-shot blocks per scale).
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
