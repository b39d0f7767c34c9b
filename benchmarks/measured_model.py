"""The generator the speed benchmarks measure, defined once for train_speed, generate_speed and serve_load.

ddn-train's default model (the ``cpu`` preset) at MNIST's 32x32 training size.
Random weights from a fixed seed: speed does not depend on training.
"""
from __future__ import annotations

import torch

from ddn.training.networks import DDNGenerator, build_generator
from ddn.training.presets import preset_config

MODEL_CONFIG = preset_config("cpu", image_size=32, image_channels=1)


def measured_model(seed: int = 0) -> DDNGenerator:
    """The benchmark generator, initialised under ``seed`` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_generator(MODEL_CONFIG)
