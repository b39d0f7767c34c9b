"""The static graphs ``ddn-export`` freezes (generate, encode, one per condition): thin wrappers that convert the wire
format to the model's and call the model's own ``run()``, so the exported graph and PyTorch cannot drift apart (io:
docs/export.md).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from ddn.conditions import CONDITIONS, MASK
from ddn.repository_contract import GraphLayout, TensorSpec
from ddn.training.guidance import DISTANCES, Condition, TargetCondition, condition_from_inputs, pixels_to_model
from ddn.training.networks import DDNGenerator


def model_to_float(images: torch.Tensor) -> torch.Tensor:
    """float [B, C, H, W] -> float [B, H, W, C] clamped into [-1, 1]."""
    return images.clamp(-1.0, 1.0).permute(0, 2, 3, 1)


def float_to_pixels(images_hwc: torch.Tensor) -> torch.Tensor:
    """float [B, H, W, C] -> uint8 as ddn.images.to_uint8 does: round half-to-even (torch, numpy and ONNX agree), with
    the cast last because TensorRT needs that.
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

    def dynamic_shapes(self, batch: torch.export.Dim) -> tuple:
        """torch.export's ``dynamic_shapes`` for :meth:`forward`'s arguments: each input's batch axis."""
        return tuple({0: batch} for _ in self.inputs())

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


class ConditionGraph(GeneratorGraph):
    """A zero-shot condition's graph: its registry inputs (uint8) -> images, codes along the top-1 path, everything
    condition-specific taken from the registries under the graph's kind.
    """

    def __init__(self, generator: DDNGenerator, kind: str, superres_factor: int = 4):
        super().__init__(generator)
        self.kind, self.spec = kind, CONDITIONS[kind]
        if not self.spec.supports(generator.image_channels):
            raise ValueError(f"{kind} needs an RGB model, this one has {generator.image_channels} channel(s)")
        self.superres_factor = None
        if any(i.low_res for i in self.spec.inputs):
            size, factor = generator.image_size, superres_factor
            if factor < 1 or factor & (factor - 1) or size % factor:
                raise ValueError(f"super-resolution factor must be a power of two dividing the image size {size}, "
                                 f"got {factor}")
            self.superres_factor = factor

    def layout(self) -> GraphLayout:
        return dataclasses.replace(super().layout(), superres_factor=self.superres_factor)

    def inputs(self) -> list[TensorSpec]:
        return list(self.spec.input_specs(self.layout()))

    def example_inputs(self, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        shapes = {spec.name: spec.shape for spec in self.inputs()}
        observed = DISTANCES[self.kind].observe(self._decoded(batch, rng), shapes, rng)
        return tuple(observed[i.name].permute(0, 2, 3, 1).to(torch.uint8).numpy() if i.values == MASK
                     else _pixels(observed[i.name]) for i in self.spec.inputs)

    def dynamic_shapes(self, batch: torch.export.Dim) -> tuple:
        return (super().dynamic_shapes(batch),)  # forward(*inputs) takes the inputs as one tuple

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._guided(condition_from_inputs(self.kind, dict(zip([i.name for i in self.spec.inputs], inputs))))


def build_graphs(generator: DDNGenerator, superres_factor: int = 4) -> dict[str, GeneratorGraph]:
    """Every graph this generator supports, by kind: generate, encode, and each registered condition it supports."""
    graphs: dict[str, GeneratorGraph] = {"generate": GenerateGraph(generator), "encode": EncodeGraph(generator)}
    for kind, spec in CONDITIONS.items():
        if spec.supports(generator.image_channels):
            graphs[kind] = ConditionGraph(generator, kind, superres_factor)
    return graphs
