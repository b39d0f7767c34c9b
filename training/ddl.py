"""The Discrete Distribution Layer (DDL) as the paper and the official code define it: K branches of a bias-free 1x1
conv make K candidate images, one is kept, and its rows applied to the other half of the features give the leak that
tells the next block which branch was taken. ``clamp`` (not official) keeps the previous image in [-1, 1] so a
random path cannot go blank (docs/training.md). A chooser sees the candidates as :class:`Candidates`, which builds
the K images only when asked: the guided sampler's distance to one image needs none of them.
"""
from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import nn

from .split_and_prune import BranchUsage

# Picks one branch per sample from a layer's K candidates; returns int64 [B].
Chooser = Callable[["Candidates"], torch.Tensor]
Choice = Union[torch.Tensor, Chooser]


def area_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize square maps by area averaging (down) or nearest repetition (up), power-of-two factors.

    Targets and conditions are brought to a layer's resolution this way.
    """
    current = x.shape[-1]
    if current == size:
        return x
    if current > size:
        return F.avg_pool2d(x, current // size)
    return F.interpolate(x, scale_factor=size // current, mode="nearest")


def bilinear_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """The previous chosen image brought to a layer's resolution (the learning residual's input)."""
    if x.shape[-1] == size:
        return x
    # A scale factor, not a size: the same sampling grid for power-of-two sizes, and a graph
    # exported with it needs no shape arithmetic on the dynamic batch.
    return F.interpolate(x, scale_factor=size // x.shape[-1], mode="bilinear", align_corners=False)


class DiscreteDistributionLayer(nn.Module):
    def __init__(self, channels: int, image_channels: int, k: int, residual: bool = True, clamp: bool = False):
        super().__init__()
        if channels % 2:
            raise ValueError(f"DDL needs an even channel count, got {channels}")
        self.channels, self.image_channels, self.k, self.residual = channels, image_channels, k, residual
        self.clamp = clamp
        self.weight = nn.Parameter(torch.empty(k, image_channels, channels // 2))
        bound = (channels // 2) ** -0.5  # nn.Conv2d's default init for a 1x1 conv over C/2 inputs
        nn.init.uniform_(self.weight, -bound, bound)
        self.usage = BranchUsage(k)

    def base_image(self, prev_image: torch.Tensor, size: int) -> torch.Tensor | None:
        """What the candidates are added to: the previous image at this resolution (clamped), or nothing."""
        if not self.residual:
            return None
        base = bilinear_resize(prev_image, size)
        return base.clamp(-1.0, 1.0) if self.clamp else base

    def candidates(self, features: torch.Tensor, prev_image: torch.Tensor) -> torch.Tensor:
        """All K candidate images [B, K, C_img, H, W]."""
        b, _, h, w = features.shape
        rows = self.weight.reshape(self.k * self.image_channels, -1, 1, 1)
        images = F.conv2d(features[:, : self.channels // 2], rows).view(b, self.k, self.image_channels, h, w)
        base = self.base_image(prev_image, h)
        return images if base is None else images + base.unsqueeze(1)

    def leak(self, features: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The chosen rows [B, C_img, C/2] applied to the second half of the features."""
        b, c, h, w = features.shape
        return torch.bmm(rows, features[:, c // 2:].reshape(b, c // 2, h * w)).view(b, self.image_channels, h, w)

    def apply_branch(self, features: torch.Tensor, prev_image: torch.Tensor, index: torch.Tensor):
        """Chosen image and leak [B, C_img, H, W] for known indices [B] from the chosen rows only, in one product over
        both feature halves (-1 for the batch, so an exported graph reshapes by constants).
        """
        _, c, h, w = features.shape
        rows = self.weight.index_select(0, index)  # [B, C_img, C/2]
        if features.is_contiguous(memory_format=torch.channels_last) and not torch.onnx.is_in_onnx_export():
            halves = _ChosenRowsByPixel.apply(features, rows)  # [B, C_img, H, W, 2]
            image, leak = halves[..., 0], halves[..., 1]
        else:
            halves = torch.matmul(rows.unsqueeze(1), features.reshape(-1, 2, c // 2, h * w))  # [B, 2, C_img, H*W]
            image, leak = halves.reshape(-1, 2 * self.image_channels, h, w).split(self.image_channels, dim=1)
        base = self.base_image(prev_image, h)
        return image if base is None else image + base, leak

    def apply_branch_all_k(self, features: torch.Tensor, prev_image: torch.Tensor, index: torch.Tensor):
        """The official computation (every candidate, then the chosen one): the same result as :meth:`apply_branch`,
        the reference for tests and benchmarks.
        """
        pick = torch.arange(features.shape[0], device=features.device)
        return self.candidates(features, prev_image)[pick, index], self.leak(features, self.weight[index])

    def forward(self, features: torch.Tensor, prev_image: torch.Tensor, choice: Choice, all_k: bool = False):
        """Returns (chosen image, leak, chosen indices [B]).

        ``choice`` is either the branch indices [B] (clamped into [0, K)) or a
        chooser that sees the K candidates, computed without gradient.
        """
        if torch.is_tensor(choice):
            index = choice.long().clamp(0, self.k - 1)
        else:
            with torch.no_grad():
                index = choice(Candidates(self, features, prev_image))
        branch = self.apply_branch_all_k if all_k else self.apply_branch
        image, leak = branch(features, prev_image, index)
        return image, leak, index


class _ChosenRowsByPixel(torch.autograd.Function):
    """The chosen rows [B, C_img, C/2] applied to both halves of channels-last features [B, C, H, W] (the blocks'
    output), read where they lie: [B, C_img, H, W, 2], image and leak in the last dimension. The channel-major
    product would copy the features, and their gradient, at every layer; autograd's own backward of this one
    would copy the gradient. Under autocast the product runs in autocast's dtype; the backward runs in the
    gradient's and returns each input's own.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        b, c, h, w = features.shape
        by_pixel = features.permute(0, 2, 3, 1).reshape(b, h * w * 2, c // 2)  # a view: (pixel, half) x channel
        halves = torch.bmm(rows, by_pixel.transpose(1, 2))  # [B, C_img, H*W*2]
        ctx.save_for_backward(by_pixel, rows)
        ctx.dtypes = features.dtype, rows.dtype
        return halves.view(b, rows.shape[1], h, w, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        by_pixel, rows = ctx.saved_tensors
        b, image_channels, h, w, _ = grad.shape
        grad = grad.reshape(b, image_channels, h * w * 2)
        grad_by_pixel = torch.bmm(grad.transpose(1, 2), rows.to(grad.dtype))  # [B, H*W*2, C/2]: channels-last
        grad_rows = torch.bmm(grad, by_pixel.to(grad.dtype))
        grad_features = grad_by_pixel.view(b, h, w, -1).permute(0, 3, 1, 2)
        return grad_features.to(ctx.dtypes[0]), grad_rows.to(ctx.dtypes[1])


class Candidates:
    """A layer's K candidate images for a batch, as a chooser sees them: :meth:`images` builds them, :meth:`mse_to`
    measures them against one image without building them.
    """

    def __init__(self, layer: DiscreteDistributionLayer, features: torch.Tensor, prev_image: torch.Tensor):
        self.layer, self.features, self.prev_image = layer, features, prev_image
        self.size = features.shape[-1]

    def images(self) -> torch.Tensor:
        """All K candidate images [B, K, C_img, H, W]."""
        return self.layer.candidates(self.features, self.prev_image)

    def mse_to(self, reference: torch.Tensor) -> torch.Tensor:
        """Mean squared difference [B, K] of each candidate to ``reference`` [B, C_img, H, W], the same values as from
        :meth:`images` up to rounding, by the cheaper route.

        A candidate is W_k f + base (f the first half of the features), so with r = base - reference its squared
        distance expands to W_k G W_k + 2 W_k . (f r^T) + |r|^2, G = f f^T: per sample a C/2 x C/2 matrix instead
        of K images, which at 32x32 cost more than the layer's block (docs/training.md). At a few pixels and many
        channels the images are the cheaper route.
        """
        layer = self.layer
        _, _, h, w = self.features.shape
        half, rows, pixels = layer.channels // 2, layer.k * layer.image_channels, h * w
        if half * half * (pixels + rows) > rows * pixels * (half + 3):  # multiply-adds of the two routes
            return per_sample_mse(self.images(), reference)
        with torch.autocast(self.features.device.type, enabled=False):  # a sum of large terms: keep fp32
            # -1 for the batch: an exported graph reshapes by constants.
            f = self.features[:, :half].float().reshape(-1, half, pixels)  # [B, D, P]
            base = layer.base_image(self.prev_image.float(), h)
            offset = -reference.float() if base is None else base - reference.float()
            offset = offset.reshape(-1, layer.image_channels, pixels)  # [B, C, P]
            weight = layer.weight.float()
            gram = torch.bmm(f, f.transpose(1, 2))  # [B, D, D]
            by_row = weight.reshape(rows, half)  # [K*C, D]
            quadratic = (torch.matmul(by_row, gram) * by_row).sum(-1).view(-1, layer.k, layer.image_channels).sum(-1)
            cross = torch.bmm(offset, f.transpose(1, 2)).flatten(1)  # [B, C*D]
            linear = cross @ weight.reshape(layer.k, -1).t()  # [B, K]
            constant = offset.pow(2).sum((1, 2)).unsqueeze(1)
            return (quadratic + 2 * linear + constant) / (layer.image_channels * pixels)


def per_sample_mse(candidates: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean squared difference [B, K] of candidate images [B, K, C, H, W] to ``reference`` [B, C, H, W]."""
    return (candidates - reference.unsqueeze(1)).pow(2).flatten(2).mean(2)
