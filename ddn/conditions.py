"""Zero-shot conditions, one registry entry each: a name (option value, graph kind, entry suffix, distance key), its
inputs and the options that read them, with one-line checks; torch-free, the distance is in
:data:`ddn.training.guidance.DISTANCES`. A new condition is one :class:`ConditionSpec` plus one distance.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

if TYPE_CHECKING:  # repository_contract derives its graph kinds from this registry, so it imports this module
    from ddn.repository_contract import GraphLayout, TensorSpec

PIXELS = "pixels"  # uint8 0..255, an image as a PNG file holds it
MASK = "mask"  # uint8 per pixel: 1 = known (keep), 0 = to fill; its file is white (keep) and black (fill in)
MODEL_CHANNELS = 0  # an input with the model's own channel count


class ConditionError(ValueError):
    """Condition inputs that do not fit the condition's schema (one line, naming the input)."""


@dataclass(frozen=True)
class ConditionInput:
    """One input of a condition graph: uint8 [B, side, side, channels] per its layout."""

    name: str  # the graph's input name and the keyword of conditional(...)
    option: str  # the ddn-generate option that reads it from an image file, without "--"
    meaning: str  # one line for --help and ddn.json
    values: str = PIXELS
    channels: int = MODEL_CHANNELS
    low_res: bool = False  # side = image_size // the layout's superres_factor (any power of two when unset)

    def shape(self, layout: GraphLayout) -> tuple[int, int, int]:
        """Per-sample shape; -1 for a free side (a low-res input of a layout without a factor)."""
        side = layout.image_size
        if self.low_res:
            side = -1 if layout.superres_factor is None else layout.image_size // layout.superres_factor
        return side, side, layout.image_channels if self.channels == MODEL_CHANNELS else self.channels

    def spec(self, layout: GraphLayout) -> TensorSpec:
        from ddn.repository_contract import TensorSpec  # here: that module imports this one

        return TensorSpec(self.name, np.dtype(np.uint8), self.shape(layout))

    def problem(self, layout: GraphLayout, sample: tuple[int, ...]) -> str | None:
        """What is wrong with a sample of this shape [H, W, C] (the predicate after "input X"), or None."""
        side, _, channels = self.shape(layout)
        size = layout.image_size
        if len(sample) != 3:
            return f"has shape {list(sample)}; it must be [H, W, C]"
        h, w, c = sample
        if h != w:
            return f"is {w}x{h}; it must be square"
        if side == -1 and (h < 1 or h >= size or size % h or h & (h - 1)):
            return (f"is {h}x{h}; it must be a power of two smaller than the model's {size}x{size} "
                    f"(e.g. {size // 2} or {size // 4})")
        if side != -1 and h != side:
            why = (f"the model's {size}x{size} images / superres factor {layout.superres_factor}" if self.low_res
                   else "the model's image size")
            return f"is {h}x{h}; it must be {side}x{side} ({why})"
        if c != channels:
            kind = " (grayscale)" if channels == 1 else " (RGB)" if channels == 3 else ""
            return f"has {c} channel(s); it must have {channels}{kind}"
        return None


@dataclass(frozen=True)
class ConditionSpec:
    """A condition: its name, what it does, its inputs; the torch distance lives under the same name."""

    name: str
    summary: str
    inputs: tuple[ConditionInput, ...]
    rgb_only: bool = False

    def supports(self, image_channels: int) -> bool:
        return not self.rgb_only or image_channels == 3

    def input_specs(self, layout: GraphLayout) -> tuple[TensorSpec, ...]:
        """The graph's inputs for a model of this layout (what export writes and servers check)."""
        return tuple(i.spec(layout) for i in self.inputs)

    def description(self) -> dict[str, object]:
        """What ddn.json says about the condition, for people."""
        return {"name": self.name, "summary": self.summary,
                "inputs": {i.name: i.meaning for i in self.inputs}}

    def _check_model(self, layout: GraphLayout) -> None:
        if not self.supports(layout.image_channels):
            raise ConditionError(f"{self.name} needs an RGB model; this one makes {layout.image_channels}-channel "
                                 "images")

    def check(self, layout: GraphLayout, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Batched arrays by input name, checked: names, uint8, shapes, mask values, one batch size."""
        self._check_model(layout)
        names = [i.name for i in self.inputs]
        if sorted(inputs) != sorted(names):
            raise ConditionError(f"{self.name} takes inputs {', '.join(names)}; got {', '.join(inputs) or 'none'}")
        arrays: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            array = np.asarray(inputs[spec.name])
            where = f"{self.name}: input {spec.name!r}"
            if array.dtype != np.uint8:
                raise ConditionError(f"{where} must be uint8, got {array.dtype}")
            problem = spec.problem(layout, array.shape[1:]) if array.ndim >= 1 else "is a scalar"
            if problem:
                raise ConditionError(f"{where} [B, H, W, C] {problem}")
            if spec.values == MASK and array.size and array.max() > 1:
                raise ConditionError(f"{where} must hold only 0 (fill in) and 1 (keep), found {int(array.max())}")
            arrays[spec.name] = array
        batches = sorted({a.shape[0] for a in arrays.values()})
        if len(batches) > 1:
            raise ConditionError(f"{self.name}: inputs have different batch sizes {batches}")
        return arrays

    def read_files(self, layout: GraphLayout, files: Mapping[str, str | Path]) -> dict[str, np.ndarray]:
        """One sample [H, W, C] per input from the image files given by option name, checked as :meth:`check`.

        A mask file is black (0, fill in) and white (255, keep) and becomes 0/1.
        """
        # PIL here, not above: the python twin's model.py reaches this registry through repository_contract.
        from ddn.images import load_png

        self._check_model(layout)
        arrays: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            path = files[spec.option]
            pixels = load_png(path)
            where = f"{self.name}: --{spec.option} {path}"
            problem = spec.problem(layout, pixels.shape)
            if problem:
                raise ConditionError(f"{where} {problem}")
            if spec.values == MASK:
                gray = pixels[(pixels != 0) & (pixels != 255)]
                if gray.size:
                    raise ConditionError(f"{where} must be black (fill in) and white (keep) only; "
                                         f"found gray level {int(gray[0])}")
                pixels = (pixels == 255).astype(np.uint8)
            arrays[spec.name] = pixels
        return arrays


CONDITIONS: dict[str, ConditionSpec] = {spec.name: spec for spec in (
    ConditionSpec("superres", "super-resolution (samples whose area-downsampling matches the low-res input)",
                  (ConditionInput("low_res", "input", "the low-res image (the model's size / superres factor)",
                                  low_res=True),)),
    ConditionSpec("colorize", "colorization (RGB samples whose BT.601 luma matches the grayscale input)",
                  (ConditionInput("gray", "input", "the grayscale image, at the model's size", channels=1),),
                  rgb_only=True),
    ConditionSpec("inpaint", "inpainting (samples that match the input where the mask is 1, white in its file)",
                  (ConditionInput("image", "input", "the image, at the model's size and channels"),
                   ConditionInput("mask", "mask", "the known pixels: 1 (file: white) = keep, "
                                          "0 (black) = fill in", values=MASK, channels=1))),
    ConditionSpec("denoise", "denoising / low-bit restoration (samples nearest, in L2, to the degraded input)",
                  (ConditionInput("image", "input", "the noisy or low-bit image, at the model's size and "
                                  "channels"),)),
)}


def condition_spec(name: str) -> ConditionSpec:
    """The registry entry ``name``; ConditionError listing the known ones."""
    if name not in CONDITIONS:
        raise ConditionError(f"unknown condition {name!r}; choose from {', '.join(CONDITIONS)}")
    return CONDITIONS[name]
