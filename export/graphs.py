"""The static graphs ``ddn-export`` freezes: thin wrappers around a generator's own ``run()``.

Each wrapper turns the wire format (uint8 pixels, channels-last, int32 codes)
into the model's (float [-1, 1], channels-first) and back, and otherwise calls
the generator exactly as PyTorch code does, so the exported graph and the
PyTorch model cannot drift apart:

* ``generate``  codes int32 [B, L] -> images uint8 [B, H, W, C], images_float float32 [B, H, W, C]
  (the sampled path: each DDL gathers only the chosen branch's rows, ``apply_branch``;
  the DDL clamps indices into [0, K) before the gather, so no backend reads out of bounds)
* ``encode``    images uint8 [B, H, W, C] -> codes int32 [B, L] (argmin of the L2 to the target per layer)
* ``superres``  low_res uint8 [B, H/f, W/f, C] -> images, codes (top-1 zero-shot super-resolution)
* ``colorize``  gray uint8 [B, H, W, 1] -> images, codes (top-1 zero-shot colorization, C == 3 only)
* ``inpaint``   image uint8 [B, H, W, C], mask uint8 [B, H, W, 1] (nonzero = known) -> images, codes

Every graph is a static graph with a dynamic batch axis; argmin runs inside it.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch
from torch import nn

from ddn.repository_contract import GraphLayout, TensorSpec
from ddn.training.ddl import area_resize
from ddn.training.guidance import (Colorization, Condition, Inpainting, SuperResolution, TargetCondition,
                                   to_grayscale)
from ddn.training.networks import DDNGenerator


def pixels_to_model(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, C] -> float [B, C, H, W] in [-1, 1] (inverse of :func:`float_to_pixels` up to rounding).

    The cast comes first: TensorRT accepts a uint8 network input only when a Cast consumes it.
    """
    return pixels.float().permute(0, 3, 1, 2) / 127.5 - 1.0


def model_to_float(images: torch.Tensor) -> torch.Tensor:
    """float [B, C, H, W] -> float [B, H, W, C] clamped into [-1, 1]."""
    return images.clamp(-1.0, 1.0).permute(0, 2, 3, 1)


def float_to_pixels(images_hwc: torch.Tensor) -> torch.Tensor:
    """float [B, H, W, C] -> uint8: round((x + 1) * 127.5) clamped to [0, 255] (as ddn.images.to_uint8).

    Round is half-to-even in torch, numpy and ONNX alike; the uint8 cast is the last op (TensorRT needs that).
    """
    return torch.round((images_hwc + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)


def _pixels(images: torch.Tensor) -> np.ndarray:
    return float_to_pixels(model_to_float(images)).numpy()


class GeneratorGraph(nn.Module):
    """Base of the exported graphs: holds the generator and describes the graph's io."""

    kind: str

    def __init__(self, generator: DDNGenerator):
        super().__init__()
        self.generator = generator

    @property
    def image_shape(self) -> tuple[int, int, int]:
        g = self.generator
        return g.image_size, g.image_size, g.image_channels

    def layout(self) -> GraphLayout:
        """What the entry's config and ddn.json say about this graph."""
        g = self.generator
        return GraphLayout(self.kind, g.num_layers, tuple(g.branch_counts), g.image_size, g.image_channels)

    def inputs(self) -> list[TensorSpec]:
        raise NotImplementedError

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("images", np.dtype(np.uint8), self.image_shape),
                TensorSpec("codes", np.dtype(np.int32), (self.generator.num_layers,))]

    def example_inputs(self, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """Inputs for export and verification, in the order of :meth:`inputs`."""
        raise NotImplementedError

    def random_codes(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        ks = np.asarray(self.generator.branch_counts)
        return rng.integers(0, ks, size=(batch, len(ks))).astype(np.int32)

    def _decoded(self, batch: int, rng: np.random.Generator) -> torch.Tensor:
        """Images the model can make (decoded random codes), float [B, C, H, W]: realistic guided inputs."""
        return self.generator.decode(self.random_codes(batch, rng))

    def _guided(self, condition: Condition) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-1 zero-shot path: (images uint8 [B, H, W, C], codes int32 [B, L])."""
        image, codes = self.generator.guided(condition, "top1")
        return float_to_pixels(model_to_float(image)), codes.to(torch.int32)


class GenerateGraph(GeneratorGraph):
    kind = "generate"

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("codes", np.dtype(np.int32), (self.generator.num_layers,))]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("images", np.dtype(np.uint8), self.image_shape),
                TensorSpec("images_float", np.dtype(np.float32), self.image_shape)]

    def example_inputs(self, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        return (self.random_codes(batch, rng),)

    def forward(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, _, _ = self.generator.run(codes.shape[0], lambda layer: codes[:, layer])
        images_float = model_to_float(image)
        return float_to_pixels(images_float), images_float


class EncodeGraph(GeneratorGraph):
    kind = "encode"

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("images", np.dtype(np.uint8), self.image_shape)]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("codes", np.dtype(np.int32), (self.generator.num_layers,))]

    def example_inputs(self, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        return (_pixels(self._decoded(batch, rng)),)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._guided(TargetCondition(pixels_to_model(images)))[1]


class SuperResolutionGraph(GeneratorGraph):
    kind = "superres"

    def __init__(self, generator: DDNGenerator, factor: int = 4):
        super().__init__(generator)
        size = generator.image_size
        if factor < 1 or factor & (factor - 1) or size % factor:
            raise ValueError(f"super-resolution factor must be a power of two dividing the image size {size}, got {factor}")
        self.factor = factor

    def layout(self) -> GraphLayout:
        return dataclasses.replace(super().layout(), superres_factor=self.factor)

    def inputs(self) -> list[TensorSpec]:
        h, w, c = self.image_shape
        return [TensorSpec("low_res", np.dtype(np.uint8), (h // self.factor, w // self.factor, c))]

    def example_inputs(self, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        images = self._decoded(batch, rng)
        return (_pixels(area_resize(images, images.shape[-1] // self.factor)),)

    def forward(self, low_res: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._guided(SuperResolution(pixels_to_model(low_res)))


class ColorizationGraph(GeneratorGraph):
    kind = "colorize"

    def __init__(self, generator: DDNGenerator):
        super().__init__(generator)
        if generator.image_channels != 3:
            raise ValueError(f"colorization needs an RGB model, this one has {generator.image_channels} channel(s)")

    def inputs(self) -> list[TensorSpec]:
        h, w, _ = self.image_shape
        return [TensorSpec("gray", np.dtype(np.uint8), (h, w, 1))]

    def example_inputs(self, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        return (_pixels(to_grayscale(self._decoded(batch, rng))),)

    def forward(self, gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._guided(Colorization(pixels_to_model(gray)))


class InpaintingGraph(GeneratorGraph):
    kind = "inpaint"

    def inputs(self) -> list[TensorSpec]:
        h, w, c = self.image_shape
        return [TensorSpec("image", np.dtype(np.uint8), (h, w, c)), TensorSpec("mask", np.dtype(np.uint8), (h, w, 1))]

    def example_inputs(self, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        h, w, _ = self.image_shape
        mask = np.ones((batch, h, w, 1), dtype=np.uint8)
        for m in mask:  # hide one random box per sample, at least a quarter of the image
            top, left = rng.integers(0, h // 2 + 1), rng.integers(0, w // 2 + 1)
            m[top:top + max(1, h // 2), left:left + max(1, w // 2)] = 0
        return _pixels(self._decoded(batch, rng)), mask

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        known = (mask.float() > 0).float().permute(0, 3, 1, 2)  # cast first, as in pixels_to_model
        return self._guided(Inpainting(pixels_to_model(image), known))


def build_graphs(generator: DDNGenerator, superres_factor: int = 4) -> dict[str, GeneratorGraph]:
    """Every graph this generator supports, by kind (colorization only for RGB models)."""
    builders: dict[str, Callable[[], GeneratorGraph]] = {
        "generate": lambda: GenerateGraph(generator),
        "encode": lambda: EncodeGraph(generator),
        "superres": lambda: SuperResolutionGraph(generator, superres_factor),
        "colorize": lambda: ColorizationGraph(generator),
        "inpaint": lambda: InpaintingGraph(generator),
    }
    if generator.image_channels != 3:
        del builders["colorize"]
    return {kind: build() for kind, build in builders.items()}
