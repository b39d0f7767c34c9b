"""DDN models (generators): a stack of blocks, each followed by a DDL, in the two official paradigms behind one API,
:class:`DDNGenerator`. A sample's latent is always ``codes`` [B, L], one branch index per DDL call
(docs/training.md).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddn.codes import codes_from_seed, validate_codes

from .blocks import TinyUNet, UNetBlock
from .ddl import Candidates, Choice, Chooser, DiscreteDistributionLayer
from .guidance import Condition, TargetCondition, make_chooser


class DDNGenerator(nn.Module):
    """The model API shared by both paradigms; subclasses give :meth:`initial_state` and :meth:`stages`, the (block,
    ddl) pairs the walk goes through.
    """

    image_channels: int
    image_size: int

    def initial_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def stages(self) -> Sequence[tuple[nn.Module, DiscreteDistributionLayer]]:
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
        return [ddl.k for _, ddl in self.stages()]

    def ddls(self) -> list[DiscreteDistributionLayer]:
        """Each distinct DDL once (the recurrence generator reuses one)."""
        unique: dict[int, DiscreteDistributionLayer] = {}
        for _, ddl in self.stages():
            unique.setdefault(id(ddl), ddl)
        return list(unique.values())

    # -- the walk down the tree --------------------------------------------------
    def run(self, batch: int, choose: Callable[[int], Choice], all_k: bool = False):
        """Walk all layers; ``choose(l)`` gives layer l's indices or chooser.

        Returns (final image [B, C, H, W], codes [B, L], per-layer chosen images).
        """
        features, image, leak = self.initial_state(batch)
        codes, images = [], []
        for layer, (block, ddl) in enumerate(self.stages()):
            features = block(features, image, leak)
            image, leak, index = ddl(features, image, choose(layer), all_k=all_k)
            codes.append(index)
            images.append(image)
        return image, torch.stack(codes, dim=1), images

    # -- public API -------------------------------------------------------------
    def loss(self, images: torch.Tensor, chain_dropout: float = 0.0, rng: torch.Generator | None = None):
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
            drop = chain_dropout > 0 and float(torch.rand((), generator=rng)) < chain_dropout

            def pick(candidates: Candidates) -> torch.Tensor:
                index = nearest(candidates)
                if drop:
                    index = torch.randint(0, ddl.k, index.shape, generator=rng).to(index.device)
                return index

            return pick

        _, _, chosen = self.run(images.shape[0], choose)
        losses = [F.mse_loss(img, target.at(img.shape[-1])) for img in chosen]
        return torch.stack(losses).mean()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] for codes [B, L]; out-of-range codes raise ValueError."""
        codes = self.check_codes(codes)
        image, _, _ = self.run(codes.shape[0], lambda layer: codes[:, layer])
        return image

    @torch.no_grad()
    def sample(self, codes=None, seed: int | Sequence[int] | None = None, n: int | None = None,
               rng: torch.Generator | None = None) -> torch.Tensor:
        """Unconditional samples from exactly one of: codes [B, L], seed(s), or a count n (uniform indices)."""
        given = [x is not None for x in (codes, seed, n)]
        if sum(given) != 1:
            raise ValueError("sample() takes exactly one of codes, seed or n")
        if seed is not None:
            codes = codes_from_seed(seed, self.num_layers, self.branch_counts)
        elif n is not None:
            ks = torch.tensor(self.branch_counts)
            codes = (torch.rand(n, self.num_layers, generator=rng) * ks).long().clamp(max=ks - 1)
        return self.decode(codes)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Codes [B, L] of the path the guided sampler takes towards ``images``."""
        self._check_images(images)
        return self.guided_codes(TargetCondition(images))

    @torch.no_grad()
    def guided(self, condition: Condition, selection: str = "top1",
               rng: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-shot conditional generation: at each layer keep the candidate that best fits ``condition``.

        Returns (image [B, C, H, W], codes [B, L]) of that path.
        """
        image, codes, _ = self.run(condition.batch_size, lambda layer: make_chooser(condition, selection, rng))
        return image, codes

    def guided_codes(self, condition: Condition, selection: str = "top1",
                     rng: torch.Generator | None = None) -> torch.Tensor:
        return self.guided(condition, selection, rng)[1]

    def guided_sample(self, condition: Condition, selection: str = "top1",
                      rng: torch.Generator | None = None) -> torch.Tensor:
        return self.guided(condition, selection, rng)[0]

    # -- input checks -------------------------------------------------------------
    def check_codes(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        array = codes.detach().cpu().numpy() if torch.is_tensor(codes) else np.asarray(codes)
        validate_codes(array, self.num_layers, self.branch_counts)
        return torch.as_tensor(array, dtype=torch.long, device=next(self.parameters()).device)

    def _check_images(self, images: torch.Tensor) -> None:
        expected = (self.image_channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must have shape [B, {', '.join(map(str, expected))}], got {list(images.shape)}")


# Bounds on every size field: far beyond any real model, but they keep a corrupt or hostile config
# from asking for billions of parameters or millions of modules.
LIMITS = {"image_size": 4096, "image_channels": 4, "channels": 8192, "blocks": 256, "k": 65536, "iterations": 1024,
          "base": 1024}


def _check_range(name: str, values: list[int], low: int = 1) -> list[int]:
    if min(values) < low or max(values) > LIMITS[name]:
        raise ValueError(f"{name} must be in [{low}, {LIMITS[name]}], got {values if len(values) > 1 else values[0]}")
    return values


def _check_image(size: int, channels: int) -> int:
    """log2 of the image size, after checking both fields."""
    _check_range("image_channels", [channels])
    if size < 1 or size & (size - 1) or size > LIMITS["image_size"]:
        raise ValueError(f"image size must be a power of two up to {LIMITS['image_size']}, got {size}")
    return int(math.log2(size))


def _per_scale(name: str, value: int | Sequence[int], scales: int, low: int = 1) -> list[int]:
    """One int per scale within the field's bounds: a single value is used at every scale."""
    values = [int(value)] * scales if isinstance(value, (int, np.integer)) else [int(v) for v in value]
    if len(values) != scales:
        raise ValueError(f"{name} needs one value per scale ({scales} for this image size), got {len(values)}")
    return _check_range(name, values, low)


def init_features(channels: int) -> torch.Tensor:
    """The official single-shot model's fixed starting features at 1x1: linspace(-1, 1) over channels."""
    return torch.linspace(-1, 1, channels).view(channels, 1, 1)


def linear_spatial_embedding(channels: int, size: int) -> torch.Tensor:
    """The official recurrence model's starting maps: one ramp over all values, channel i rotated i*90 degrees."""
    ramp = torch.linspace(-1, 1, channels * size * size).view(channels, size, size)
    return torch.stack([torch.rot90(plane, i, dims=(0, 1)) for i, plane in enumerate(ramp)])


class SingleShotGenerator(DDNGenerator):
    """Resolutions 1, 2, 4, ... image_size with ``blocks[s]`` (block, DDL) pairs at scale s; ``channels``, ``blocks``
    and ``k`` are per scale (or one for all).
    """

    def __init__(self, image_size: int = 32, image_channels: int = 1, channels: int | Sequence[int] = 64,
                 blocks: int | Sequence[int] = 2, k: int | Sequence[int] = 64, residual: bool = True,
                 clamp: bool = False):
        super().__init__()
        scales = _check_image(image_size, image_channels) + 1
        channels = _per_scale("channels", channels, scales, low=2)
        blocks, k = _per_scale("blocks", blocks, scales), _per_scale("k", k, scales)
        if any(c % 2 or c < 2 * image_channels for c in channels):
            raise ValueError(f"channels must be even and at least twice the image channels, got {channels}")
        self._config = dict(image_size=image_size, image_channels=image_channels, channels=channels,
                            blocks=blocks, k=k, residual=residual, clamp=clamp)
        self.image_size, self.image_channels = image_size, image_channels
        self.register_buffer("start", init_features(channels[0]), persistent=False)
        block_list, layer_list = [], []
        for scale in range(scales):
            for i in range(blocks[scale]):
                upsample = scale > 0 and i == 0
                block_list.append(UNetBlock(channels[scale - 1] if upsample else channels[scale], channels[scale],
                                            up=upsample))
                layer_list.append(DiscreteDistributionLayer(channels[scale], image_channels, k[scale], residual, clamp))
        self.blocks = nn.ModuleList(block_list)
        self.layers = nn.ModuleList(layer_list)

    def initial_state(self, batch: int):
        features = self.start.unsqueeze(0).expand(batch, -1, -1, -1)
        zeros = features.new_zeros(batch, self.image_channels, 1, 1)
        return features, zeros, zeros

    def stages(self):
        return list(zip(self.blocks, self.layers))

    def config(self) -> dict:
        return {"kind": "single_shot", **self._config}


class RecurrenceGenerator(DDNGenerator):
    """One small U-Net block and one DDL applied ``iterations`` times at full resolution, weights shared.

    The official MNIST model: base 32 channels, K = 64, 10 iterations, no learning residual.
    """

    def __init__(self, image_size: int = 32, image_channels: int = 1, base: int = 32, iterations: int = 10,
                 k: int = 64, residual: bool = False, clamp: bool = False):
        super().__init__()
        _check_image(image_size, image_channels)
        for name, value, low in (("iterations", iterations, 1), ("k", k, 1), ("base", base, 2)):
            _check_range(name, [int(value)], low)
        if base % 2:
            raise ValueError(f"base must be even, got {base}")
        self._config = dict(image_size=image_size, image_channels=image_channels, base=base,
                            iterations=iterations, k=k, residual=residual, clamp=clamp)
        self.image_size, self.image_channels = image_size, image_channels
        self.block = TinyUNet(image_size, image_channels, base)
        self.layer = DiscreteDistributionLayer(self.block.out_channels, image_channels, k, residual, clamp)
        self.iterations = iterations
        self.register_buffer("start_features", linear_spatial_embedding(self.block.out_channels, image_size),
                             persistent=False)
        self.register_buffer("start_image", linear_spatial_embedding(image_channels, image_size), persistent=False)

    def initial_state(self, batch: int):
        image = self.start_image.unsqueeze(0).expand(batch, -1, -1, -1)
        return self.start_features.unsqueeze(0).expand(batch, -1, -1, -1), image, image

    def stages(self):
        return [(self.block, self.layer)] * self.iterations

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
