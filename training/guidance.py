"""Guided sampling: what a layer compares its K candidates against. Training and encoding compare with the target;
zero-shot conditional generation swaps in a condition's distance, without gradients or retraining. :data:`DISTANCES`
is the torch half of the condition registry in :mod:`ddn.conditions`.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from ddn.conditions import CONDITIONS, MASK

from .ddl import Candidates, Chooser, area_resize, per_sample_mse
from .split_and_prune import BranchUsage

# ITU-R BT.601 luma, the usual grayscale of an RGB image.
LUMA = (0.299, 0.587, 0.114)


def _flatten_batch(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(0, 1)


def _unflatten_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    return x.view(batch, -1, *x.shape[1:])


def to_grayscale(images: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Luma of RGB images (channel dimension ``dim``); 1-channel images pass through."""
    if images.shape[dim] == 1:
        return images
    weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device)
    shape = [1] * images.ndim
    shape[dim] = 3
    return (images * weights.view(shape)).sum(dim, keepdim=True)


def pixels_to_model(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, C] -> float [B, C, H, W] in [-1, 1].

    The cast comes first: TensorRT accepts a uint8 network input only when a Cast consumes it.
    """
    return pixels.float().permute(0, 3, 1, 2) / 127.5 - 1.0


class Condition:
    """What one layer's candidates are compared with; subclasses take their inputs by the registry's names."""

    batch_size: int

    def distance(self, candidates: torch.Tensor) -> torch.Tensor:
        """Distance [B, K] of candidate images [B, K, C, H, W] to the condition: what the chooser minimises."""
        raise NotImplementedError

    def distance_of(self, candidates: Candidates) -> torch.Tensor:
        """:meth:`distance` of a layer's candidates, by the cheapest route the condition knows."""
        return self.distance(candidates.images())

    @classmethod
    def observe(cls, images: torch.Tensor, shapes: Mapping[str, tuple[int, int, int]],
                rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """This condition's inputs for clean images [B, C, H, W] in [-1, 1] (masks as float 0/1 [B, 1, H, W]).

        ``shapes`` are the inputs' [H, W, C] for the model (the registry's schema).
        """
        raise NotImplementedError


class TargetCondition(Condition):
    """L2 to the area-resized target: the guided sampler of training and encoding."""

    def __init__(self, target: torch.Tensor):
        self.target, self.batch_size = target, target.shape[0]
        self._resized: dict[int, torch.Tensor] = {}

    def at(self, size: int) -> torch.Tensor:
        """The target area-resized to ``size``, once per size: several layers share a resolution."""
        if size not in self._resized:
            self._resized[size] = area_resize(self.target, size)
        return self._resized[size]

    def distance(self, candidates: torch.Tensor) -> torch.Tensor:
        return per_sample_mse(candidates, self.at(candidates.shape[-1]))

    def distance_of(self, candidates: Candidates) -> torch.Tensor:
        return candidates.mse_to(self.at(candidates.size))


class Denoising(TargetCondition):
    """Denoising and low-bit restoration: L2 to the degraded image area-resized to each layer, where coarse layers
    average the noise away.
    """

    NOISE = 0.2  # standard deviation, in [-1, 1] units, of the noise observe() adds

    def __init__(self, image: torch.Tensor):  # the registry's name for the degraded image
        super().__init__(image)

    @classmethod
    def observe(cls, images, shapes, rng):
        noise = torch.from_numpy(rng.normal(0.0, cls.NOISE, images.shape).astype(np.float32))
        return {"image": (images + noise).clamp(-1.0, 1.0)}


class SuperResolution(Condition):
    """Candidates, area-downsampled to the low-res condition's size, compared with it."""

    def __init__(self, low_res: torch.Tensor):
        self.low_res, self.batch_size = low_res, low_res.shape[0]

    @classmethod
    def observe(cls, images, shapes, rng):
        return {"low_res": area_resize(images, shapes["low_res"][0])}

    def distance(self, candidates: torch.Tensor) -> torch.Tensor:
        size = min(candidates.shape[-1], self.low_res.shape[-1])
        small = _unflatten_batch(area_resize(_flatten_batch(candidates), size), self.batch_size)
        return per_sample_mse(small, area_resize(self.low_res, size))


class Colorization(Condition):
    """Grayscale of the candidates compared with the grayscale condition [B, 1, H, W]."""

    def __init__(self, gray: torch.Tensor):
        self.gray, self.batch_size = gray, gray.shape[0]

    @classmethod
    def observe(cls, images, shapes, rng):
        return {"gray": to_grayscale(images)}

    def distance(self, candidates: torch.Tensor) -> torch.Tensor:
        gray = to_grayscale(candidates, dim=2)
        return per_sample_mse(gray, area_resize(self.gray, candidates.shape[-1]))


class Inpainting(Condition):
    """Masked L2: only pixels where ``mask`` is 1 (known) count. mask is [B, 1, H, W]."""

    def __init__(self, image: torch.Tensor, mask: torch.Tensor):
        self.image, self.mask, self.batch_size = image, mask.to(image.dtype), image.shape[0]

    @classmethod
    def observe(cls, images, shapes, rng):
        b, _, h, w = images.shape
        mask = torch.ones(b, 1, h, w)
        for m in mask:  # hide one random box per sample, at least a quarter of the image
            top, left = int(rng.integers(0, h // 2 + 1)), int(rng.integers(0, w // 2 + 1))
            m[:, top:top + max(1, h // 2), left:left + max(1, w // 2)] = 0
        return {"image": images, "mask": mask}

    def distance(self, candidates: torch.Tensor) -> torch.Tensor:
        size = candidates.shape[-1]
        mask = area_resize(self.mask, size).unsqueeze(1)  # fraction of known pixels per cell
        known = area_resize(self.image * self.mask, size) / area_resize(self.mask, size).clamp_min(1e-6)
        diff = (candidates - known.unsqueeze(1)).pow(2) * mask
        return diff.flatten(2).sum(2) / mask.flatten(2).sum(2).clamp_min(1e-6)


# The torch half of the condition registry: each name of ddn.conditions.CONDITIONS -> its distance.
DISTANCES: dict[str, type[Condition]] = {
    "superres": SuperResolution,
    "colorize": Colorization,
    "inpaint": Inpainting,
    "denoise": Denoising,
}


def condition_from_inputs(name: str, inputs: Mapping[str, torch.Tensor]) -> Condition:
    """The distance of condition ``name`` for its inputs as served (uint8 by input name); the exported graph and the
    research path both build it here, so both read inputs alike.
    """
    spec = CONDITIONS[name]
    tensors = {i.name: (inputs[i.name].float() > 0).float().permute(0, 3, 1, 2) if i.values == MASK
               else pixels_to_model(inputs[i.name]) for i in spec.inputs}
    return DISTANCES[name](**tensors)


def make_chooser(condition: Condition, selection: str = "top1", rng: torch.Generator | None = None,
                 usage: BranchUsage | None = None) -> Chooser:
    """A chooser for one layer: argmin of the condition's distance ("top1") or a random pick of the two nearest ("top2").

    With ``usage`` the nearest and second-nearest choices are recorded for split-and-prune.
    """
    if selection not in ("top1", "top2"):
        raise ValueError(f"selection must be 'top1' or 'top2', got {selection!r}")

    def choose(candidates: Candidates) -> torch.Tensor:
        distances = condition.distance_of(candidates)
        if usage is not None:
            usage.record(distances)
        if selection == "top1" or distances.shape[1] < 2:
            return distances.argmin(1)
        top2 = distances.topk(2, dim=1, largest=False).indices
        pick = torch.randint(0, 2, (top2.shape[0], 1), generator=rng).to(top2.device)
        return top2.gather(1, pick).squeeze(1)

    return choose
