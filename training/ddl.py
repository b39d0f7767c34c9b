"""The Discrete Distribution Layer (DDL).

A DDL turns features [B, C, H, W] into K candidate images at once and keeps
one of them. Its weight is a bias-free 1x1 conv stored per branch as
``weight[k]`` = [rows, C/2] with rows = image channels + leak channels:

* the first C/2 feature channels go through the image rows of all K branches
  (the K candidates, each added to the previous chosen image: learning residual);
* the last C/2 channels go through the leak rows of the chosen branch only,
  giving a feature that tells the next block which branch was taken.

When the branch index is known in advance (sampling, decoding, the exported
graph) only the chosen branch's rows are gathered and applied, so the head
costs 1/K of computing every candidate.
"""
from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import nn

from .split_and_prune import BranchUsage

# Picks one branch per sample from the K candidates [B, K, C, H, W]; returns int64 [B].
Chooser = Callable[[torch.Tensor], torch.Tensor]
Choice = Union[torch.Tensor, Chooser]


def area_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize square maps by area averaging (down) or nearest repetition (up), power-of-two factors."""
    current = x.shape[-1]
    if current == size:
        return x
    if current > size:
        return F.avg_pool2d(x, current // size)
    return F.interpolate(x, scale_factor=size // current, mode="nearest")


class DiscreteDistributionLayer(nn.Module):
    def __init__(self, channels: int, image_channels: int, k: int, leak_channels: int | None = None):
        super().__init__()
        if channels % 2:
            raise ValueError(f"DDL needs an even channel count, got {channels}")
        self.channels = channels
        self.image_channels = image_channels
        self.k = k
        self.leak_channels = channels // 2 if leak_channels is None else leak_channels
        if image_channels + self.leak_channels > channels:
            raise ValueError("image channels + leak channels must fit in the feature channels")
        rows = image_channels + self.leak_channels
        self.weight = nn.Parameter(torch.empty(k, rows, channels // 2))
        nn.init.normal_(self.weight, std=(channels // 2) ** -0.5)
        self.usage = BranchUsage(k)

    def candidates(self, features: torch.Tensor, prev_image: torch.Tensor) -> torch.Tensor:
        """All K candidate images [B, K, C_img, H, W]."""
        half = features[:, : self.channels // 2]
        w = self.weight[:, : self.image_channels].reshape(self.k * self.image_channels, -1, 1, 1)
        deltas = F.conv2d(half, w)
        b, _, h, wd = deltas.shape
        return prev_image.unsqueeze(1) + deltas.view(b, self.k, self.image_channels, h, wd)

    def apply_branch(self, features: torch.Tensor, prev_image: torch.Tensor, index: torch.Tensor):
        """Chosen image [B, C_img, H, W] and leak feature [B, C_leak, H, W] for known indices [B]."""
        b, c, h, w = features.shape
        rows = self.weight[index]  # [B, rows, C/2]: the chosen branch's rows only
        image_in = features[:, : c // 2].reshape(b, c // 2, h * w)
        leak_in = features[:, c // 2 :].reshape(b, c // 2, h * w)
        image = torch.bmm(rows[:, : self.image_channels], image_in).view(b, self.image_channels, h, w)
        leak = torch.bmm(rows[:, self.image_channels :], leak_in).view(b, self.leak_channels, h, w)
        return prev_image + image, leak

    def apply_branch_all_k(self, features: torch.Tensor, prev_image: torch.Tensor, index: torch.Tensor):
        """The official way: compute every branch's image and leak rows, then keep the chosen one.

        Same result as :meth:`apply_branch`; kept as the reference for tests and benchmarks.
        """
        b, c, h, w = features.shape
        half = c // 2
        rows = self.weight.shape[1]
        img_w = self.weight[:, : self.image_channels].reshape(-1, half, 1, 1)
        leak_w = self.weight[:, self.image_channels :].reshape(-1, half, 1, 1)
        images = F.conv2d(features[:, :half], img_w).view(b, self.k, self.image_channels, h, w)
        leaks = F.conv2d(features[:, half:], leak_w).view(b, self.k, rows - self.image_channels, h, w)
        pick = torch.arange(b, device=features.device)
        return prev_image + images[pick, index], leaks[pick, index]

    def feed_forward(self, features: torch.Tensor, image: torch.Tensor, leak: torch.Tensor) -> torch.Tensor:
        """Tell the next block what was chosen: image into the first channels, leak into the last."""
        gap = self.channels - self.image_channels - self.leak_channels
        parts = [image, leak] if gap == 0 else [image, image.new_zeros(image.shape[0], gap, *image.shape[2:]), leak]
        return features + torch.cat(parts, dim=1)

    def forward(self, features: torch.Tensor, prev_image: torch.Tensor, choice: Choice, all_k: bool = False):
        """Returns (features for the next block, chosen image, chosen indices [B]).

        ``choice`` is either the branch indices [B] (clamped into [0, K)) or a
        chooser that sees the K candidates, computed without gradient.
        """
        prev_image = area_resize(prev_image, features.shape[-1])
        if torch.is_tensor(choice):
            index = choice.long().clamp(0, self.k - 1)
        else:
            with torch.no_grad():
                index = choice(self.candidates(features, prev_image))
        branch = self.apply_branch_all_k if all_k else self.apply_branch
        image, leak = branch(features, prev_image, index)
        return self.feed_forward(features, image, leak), image, index
