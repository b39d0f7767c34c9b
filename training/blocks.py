"""The feature blocks a DDN stacks between its DDLs: each maps (features, image, leak) to features, so a block learns
which branch the previous DDL took. UNetBlock is the official single-shot block, TinyUNet the official MNIST one
(docs/training.md).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm, whose per-channel scale and shift an exported graph applies as one BatchNormalization (the
    inference form with mean 0, variance 1 and eps 0: the same values) instead of ONNX's Mul and Add: one pass
    over the features fewer after each normalisation, 1.1x the generation graph on ONNX Runtime.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return super().forward(x)
        _, c, h, w = x.shape  # -1 for the batch: an exported graph reshapes by constants
        grouped = F.instance_norm(x.reshape(-1, self.num_groups, c // self.num_groups * h * w), eps=self.eps)
        normalized = grouped.reshape(-1, c, h, w)
        mean, variance = torch.zeros_like(self.weight), torch.ones_like(self.weight)
        return F.batch_norm(normalized, mean, variance, self.weight, self.bias, training=False, eps=0.0)


def group_norm(channels: int) -> GroupNorm:
    """EDM's normalisation: up to 32 groups of at least 4 channels, eps 1e-6."""
    return GroupNorm(max(1, min(32, channels // 4)), channels, eps=1e-6)


def xavier_conv(in_channels: int, out_channels: int, kernel: int, gain: float = 1.0) -> nn.Conv2d:
    """A conv initialised as EDM's: xavier-uniform weights times ``gain``, zero bias."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)
    nn.init.xavier_uniform_(conv.weight)
    with torch.no_grad():
        conv.weight.mul_(gain)
    nn.init.zeros_(conv.bias)
    return conv


def add_choice(features: torch.Tensor, image: torch.Tensor, leak: torch.Tensor) -> torch.Tensor:
    """Add the chosen image into the first C_img channels and the leak into the last C_img (channels-last)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (features, image, leak)):
        return _AddChoice.apply(features, image, leak)
    c_img = image.shape[1]
    # Slices and one concatenation (what an exported graph holds): two full-size passes fewer than adding
    # zero-padded maps.
    return torch.cat((features[:, :c_img] + image, features[:, c_img:-c_img], features[:, -c_img:] + leak),
                     1).contiguous(memory_format=torch.channels_last)


class _AddChoice(torch.autograd.Function):
    """add_choice for training: one copy and two in-place adds forward, and a backward that passes the gradient on
    as it comes. Autograd's slices and concatenation would zero-fill full-size NCHW gradients, which the
    channels-last convs then copy back (about a tenth of the cpu preset's step at 32x32).
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, image: torch.Tensor, leak: torch.Tensor) -> torch.Tensor:
        c_img = image.shape[1]
        dtype = torch.promote_types(torch.promote_types(features.dtype, image.dtype), leak.dtype)
        out = features.to(dtype=dtype, memory_format=torch.channels_last, copy=True)
        out[:, :c_img] += image
        out[:, -c_img:] += leak
        ctx.c_img, ctx.dtypes = c_img, (features.dtype, image.dtype, leak.dtype)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        c_img, (features, image, leak) = ctx.c_img, ctx.dtypes
        return grad.to(features), grad[:, :c_img].to(image), grad[:, -c_img:].to(leak)


class UNetBlock(nn.Module):
    """[B, in, r, r] -> [B, out, r, r] (or 2r with ``up``): the official single-shot block."""

    def __init__(self, in_channels: int, out_channels: int, up: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.up = in_channels, out_channels, up
        self.norm0 = group_norm(in_channels)
        self.conv0 = xavier_conv(in_channels, out_channels, 3)
        self.norm1 = group_norm(out_channels)
        self.conv1 = xavier_conv(out_channels, out_channels, 3, gain=1e-5)  # starts near identity
        self.skip = xavier_conv(in_channels, out_channels, 1) if up or in_channels != out_channels else None
        # Weights channels-last like the activations: no layout copy of each weight and its gradient per call.
        self.to(memory_format=torch.channels_last)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest") if self.up else x

    def forward(self, features: torch.Tensor, image: torch.Tensor, leak: torch.Tensor) -> torch.Tensor:
        # Channels-last activations: oneDNN's faster kernels for the few-channel convs at high resolution.
        x = add_choice(features, image, leak)
        h = self.conv0(self._resample(F.silu(self.norm0(x))))
        h = self.conv1(F.silu(self.norm1(h)))
        # A 1x1 conv commutes with nearest upsampling: the skip runs at the lower resolution, a quarter of the work.
        skip = x if self.skip is None else self.skip(x)
        return (h + self._resample(skip)).mul_(math.sqrt(0.5))  # the sum is kept by no backward: scaled in place


class NormConv(nn.Sequential):
    """LayerNorm over (C, H, W), conv3x3, SiLU: the official MNIST model's conv."""

    def __init__(self, in_channels: int, out_channels: int, size: int):
        super().__init__(nn.LayerNorm((in_channels, size, size)), nn.Conv2d(in_channels, out_channels, 3, padding=1),
                         nn.SiLU())


def tiny_stack(size: int, channels: list[int]) -> nn.Sequential:
    """NormConvs through ``channels`` (e.g. [in, c, c, c]: three convs) at resolution ``size``."""
    return nn.Sequential(*(NormConv(a, b, size) for a, b in zip(channels, channels[1:])))


class StageBias(nn.Module):
    """A learned per-channel constant: the official network's class-embedding MLP with a zero class, kept so the
    parameter count and optimisation match it.
    """

    def __init__(self, channels: int, embedding: int = 100):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(embedding, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.register_buffer("zero", torch.zeros(1, embedding), persistent=False)

    def forward(self) -> torch.Tensor:
        return self.mlp(self.zero).view(1, -1, 1, 1)


class TinyUNet(nn.Module):
    """The official MNIST recurrence block: a small U-Net (three downs, three ups with skips) making [B, out, S, S]
    features from (features, image, leak).
    """

    def __init__(self, size: int, image_channels: int, base: int = 32, out_channels: int | None = None):
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"the U-Net block needs a power-of-two size of at least 8, got {size}")
        c, out = base, out_channels or base
        self.out_channels = out
        self.embed_image = tiny_stack(size, [image_channels, c, c, c])
        self.embed_features = tiny_stack(size, [out, c, c, c])
        self.embed_leak = tiny_stack(size, [image_channels, c, c, c])
        self.bias1 = StageBias(1)  # one value added to every image channel, as the official model does
        self.bias2, self.bias3 = StageBias(c), StageBias(2 * c)
        self.down1 = nn.Conv2d(c, c, 4, 2, 1)
        self.b2 = tiny_stack(size // 2, [c, 2 * c, 2 * c, 2 * c])
        self.down2 = nn.Conv2d(2 * c, 2 * c, 4, 2, 1)
        self.b3 = tiny_stack(size // 4, [2 * c, 4 * c, 4 * c, 4 * c])
        self.down3 = nn.Conv2d(4 * c, 4 * c, 4, 2, 1)
        self.bias_mid = StageBias(4 * c)
        self.mid = tiny_stack(size // 8, [4 * c, 2 * c, 2 * c, 4 * c])
        self.up1 = nn.ConvTranspose2d(4 * c, 4 * c, 4, 2, 1)
        self.bias4 = StageBias(8 * c)
        self.b4 = tiny_stack(size // 4, [8 * c, 4 * c, 2 * c, 2 * c])
        self.up2 = nn.ConvTranspose2d(2 * c, 2 * c, 4, 2, 1)
        self.bias5 = StageBias(4 * c)
        self.b5 = tiny_stack(size // 2, [4 * c, 2 * c, c, c])
        self.up3 = nn.ConvTranspose2d(c, c, 4, 2, 1)
        self.bias_out = StageBias(2 * c)
        self.b_out = tiny_stack(size, [2 * c, out, out, out])

    def forward(self, features: torch.Tensor, image: torch.Tensor, leak: torch.Tensor) -> torch.Tensor:
        out1 = self.embed_image(image + self.bias1()) + self.embed_features(features) + self.embed_leak(leak)
        out2 = self.b2(self.down1(out1) + self.bias2())
        out3 = self.b3(self.down2(out2) + self.bias3())
        mid = self.mid(self.down3(out3) + self.bias_mid())
        out4 = self.b4(torch.cat((out3, self.up1(mid)), 1) + self.bias4())
        out5 = self.b5(torch.cat((out2, self.up2(out4)), 1) + self.bias5())
        return self.b_out(torch.cat((out1, self.up3(out5)), 1) + self.bias_out())
