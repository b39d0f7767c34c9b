"""DDN generators: a stack of blocks, each followed by a Discrete Distribution Layer.

Two paradigms share one API (:class:`DDNGenerator`):

* :class:`SingleShotGenerator` -- every block has its own DDL and the resolution
  grows 1, 2, 4, ... up to the image size.
* :class:`RecurrenceGenerator` -- one block and one DDL applied N times at full
  resolution with shared weights.

A sample's latent is always the int tensor ``codes`` [B, L]: one branch index per DDL call.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddn.codes import codes_from_seed, validate_codes

from .ddl import Choice, Chooser, DiscreteDistributionLayer, area_resize
from .guidance import Condition, TargetCondition, make_chooser


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3 twice with a skip; keeps [B, C, H, W]."""

    def __init__(self, channels: int, groups: int = 8):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, channels), channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(min(groups, channels), channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # start as identity: the DDLs see the stem at first
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class DDNGenerator(nn.Module):
    """The model API shared by both paradigms.

    Subclasses set ``self.image_channels``, ``self.image_size``, ``self.stem``
    (a learned constant feature map [C, r0, r0]) and implement :meth:`stages`,
    the sequence of (block, ddl, resolution) the forward pass walks through.
    """

    image_channels: int
    image_size: int
    stem: nn.Parameter

    def stages(self) -> Sequence[tuple[nn.Module, DiscreteDistributionLayer, int]]:
        raise NotImplementedError

    def config(self) -> dict:
        """Keyword arguments that rebuild this model (stored beside checkpoints)."""
        raise NotImplementedError

    # -- structure ------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.stages())

    @property
    def branch_counts(self) -> list[int]:
        return [ddl.k for _, ddl, _ in self.stages()]

    def ddls(self) -> list[DiscreteDistributionLayer]:
        """Each distinct DDL once (the recurrence generator reuses one)."""
        unique: dict[int, DiscreteDistributionLayer] = {}
        for _, ddl, _ in self.stages():
            unique.setdefault(id(ddl), ddl)
        return list(unique.values())

    # -- the walk down the tree --------------------------------------------------
    def run(self, batch: int, choose: Callable[[int], Choice], all_k: bool = False):
        """Walk all layers; ``choose(l)`` gives layer l's indices or chooser.

        Returns (final image [B, C, H, W], codes [B, L], per-layer chosen images).
        """
        features = self.stem.unsqueeze(0).expand(batch, -1, -1, -1)
        image = features.new_zeros(batch, self.image_channels, *features.shape[-2:])
        codes, images = [], []
        for layer, (block, ddl, resolution) in enumerate(self.stages()):
            if features.shape[-1] != resolution:
                features = F.interpolate(features, size=(resolution, resolution), mode="nearest")
            features, image, index = ddl(block(features), image, choose(layer), all_k=all_k)
            codes.append(index)
            images.append(image)
        return image, torch.stack(codes, dim=1), images

    # -- public API -------------------------------------------------------------
    def loss(self, images: torch.Tensor, chain_dropout: float = 0.0, generator: torch.Generator | None = None):
        """Guided-sampler training loss: mean over layers of the chosen candidate's MSE to the target.

        Records branch usage for split-and-prune. With probability
        ``chain_dropout`` a layer replaces the batch's choices by random ones.
        """
        self._check_images(images)
        target = TargetCondition(images)

        stages = self.stages()

        def choose(layer: int) -> Chooser:
            ddl = stages[layer][1]
            nearest = make_chooser(target, usage=ddl.usage)
            drop = chain_dropout > 0 and float(torch.rand((), generator=generator)) < chain_dropout

            def pick(candidates: torch.Tensor) -> torch.Tensor:
                index = nearest(candidates)
                if drop:
                    index = torch.randint(0, ddl.k, index.shape, generator=generator).to(index.device)
                return index

            return pick

        _, _, chosen = self.run(images.shape[0], choose)
        losses = [F.mse_loss(img, area_resize(images, img.shape[-1])) for img in chosen]
        return torch.stack(losses).mean()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] for codes [B, L]; out-of-range codes raise ValueError."""
        codes = self.check_codes(codes)
        image, _, _ = self.run(codes.shape[0], lambda layer: codes[:, layer])
        return image

    @torch.no_grad()
    def sample(self, codes=None, seed: int | Sequence[int] | None = None, n: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Unconditional samples from exactly one of: codes [B, L], seed(s), or a count n (uniform indices)."""
        given = [x is not None for x in (codes, seed, n)]
        if sum(given) != 1:
            raise ValueError("sample() takes exactly one of codes, seed or n")
        if seed is not None:
            codes = codes_from_seed(seed, self.num_layers, self.branch_counts)
        elif n is not None:
            ks = torch.tensor(self.branch_counts)
            codes = (torch.rand(n, self.num_layers, generator=generator) * ks).long().clamp(max=ks - 1)
        return self.decode(codes)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Codes [B, L] of the path the guided sampler takes towards ``images``."""
        self._check_images(images)
        return self.guided_codes(TargetCondition(images))

    @torch.no_grad()
    def guided(self, condition: Condition, selection: str = "top1",
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-shot conditional generation: at each layer keep the candidate that best fits ``condition``.

        Returns (image [B, C, H, W], codes [B, L]) of that path.
        """
        image, codes, _ = self.run(condition.batch_size, lambda layer: make_chooser(condition, selection, generator))
        return image, codes

    def guided_codes(self, condition: Condition, selection: str = "top1",
                     generator: torch.Generator | None = None) -> torch.Tensor:
        return self.guided(condition, selection, generator)[1]

    def guided_sample(self, condition: Condition, selection: str = "top1",
                      generator: torch.Generator | None = None) -> torch.Tensor:
        return self.guided(condition, selection, generator)[0]

    # -- input checks -------------------------------------------------------------
    def check_codes(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        array = codes.detach().cpu().numpy() if torch.is_tensor(codes) else np.asarray(codes)
        validate_codes(array, self.num_layers, self.branch_counts)
        return torch.as_tensor(array, dtype=torch.long, device=self.stem.device)

    def _check_images(self, images: torch.Tensor) -> None:
        expected = (self.image_channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must have shape [B, {', '.join(map(str, expected))}], got {list(images.shape)}")



def _check_power_of_two(size: int) -> int:
    if size < 1 or size & (size - 1):
        raise ValueError(f"image size must be a power of two, got {size}")
    return int(math.log2(size))


class SingleShotGenerator(DDNGenerator):
    """Resolutions 1, 2, 4, ... image_size; ``blocks_per_scale`` (block, DDL) pairs at each."""

    def __init__(self, image_size: int = 32, image_channels: int = 1, channels: int = 64,
                 blocks_per_scale: int = 2, k: int = 64, leak_channels: int | None = None):
        super().__init__()
        scales = _check_power_of_two(image_size) + 1
        self._config = dict(image_size=image_size, image_channels=image_channels, channels=channels,
                            blocks_per_scale=blocks_per_scale, k=k, leak_channels=leak_channels)
        self.image_size, self.image_channels = image_size, image_channels
        self.stem = nn.Parameter(torch.randn(channels, 1, 1))
        self.blocks = nn.ModuleList(ResBlock(channels) for _ in range(scales * blocks_per_scale))
        self.layers = nn.ModuleList(
            DiscreteDistributionLayer(channels, image_channels, k, leak_channels)
            for _ in range(scales * blocks_per_scale))
        self._resolutions = [2 ** (i // blocks_per_scale) for i in range(scales * blocks_per_scale)]

    def stages(self):
        return list(zip(self.blocks, self.layers, self._resolutions))

    def config(self) -> dict:
        return {"kind": "single_shot", **self._config}


class RecurrenceGenerator(DDNGenerator):
    """One block and one DDL applied ``iterations`` times at full resolution, weights shared."""

    def __init__(self, image_size: int = 32, image_channels: int = 1, channels: int = 64,
                 iterations: int = 10, k: int = 64, leak_channels: int | None = None):
        super().__init__()
        _check_power_of_two(image_size)
        self._config = dict(image_size=image_size, image_channels=image_channels, channels=channels,
                            iterations=iterations, k=k, leak_channels=leak_channels)
        self.image_size, self.image_channels = image_size, image_channels
        self.stem = nn.Parameter(torch.randn(channels, image_size, image_size))
        self.block = ResBlock(channels)
        self.layer = DiscreteDistributionLayer(channels, image_channels, k, leak_channels)
        self.iterations = iterations

    def stages(self):
        return [(self.block, self.layer, self.image_size)] * self.iterations

    def config(self) -> dict:
        return {"kind": "recurrence", **self._config}


def build_generator(config: dict) -> DDNGenerator:
    """Rebuild a generator from :meth:`DDNGenerator.config`."""
    kinds = {"single_shot": SingleShotGenerator, "recurrence": RecurrenceGenerator}
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in kinds:
        raise ValueError(f"unknown generator kind {kind!r}; expected one of {sorted(kinds)}")
    return kinds[kind](**config)
