"""Data-parallel plumbing: this process's rank and device, the DDP-wrapped loss and the collectives the loop uses.
Alone, every collective is a no-op, so the loop has one code path for one rank and for many.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# (images, chain dropout, dropout RNG) -> the guided-sampler loss
TrainingLoss = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``auto``, ``cpu`` or ``cuda`` as a device; ``cuda`` takes this rank's GPU."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but no CUDA device is available")
        return torch.device("cuda", local_rank or 0)
    return torch.device("cpu")


@dataclass
class Ranks:
    """This process's place in a (possibly single-process) data-parallel run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # we called init_process_group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> Ranks:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
        resolved = resolve_device(device, local_rank if world > 1 else None)
        owns = False
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
            owns = True
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        return cls(rank, world, resolved, owns)

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Sum in place over ranks (a no-op alone)."""
        if self.world_size > 1:
            dist.all_reduce(tensor)

    def training_loss(self, model: nn.Module) -> TrainingLoss:
        """``model.loss``, through DistributedDataParallel on several ranks; wrapping broadcasts rank 0's weights once,
        and buffers need no later broadcast because every rank adds the same rank-summed usage counts.
        """
        if self.world_size == 1:
            return model.loss
        return DistributedDataParallel(_Loss(model), device_ids=[self.device] if self.device.type == "cuda" else None,
                                       forward_sync_buffers=False, gradient_as_bucket_view=True)

    def gather_cpu(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of an equally shaped CPU tensor (on every rank)."""
        if self.world_size == 1:
            return [tensor.clone()]
        comm = tensor.to(self.device)
        parts = [torch.empty_like(comm) for _ in range(self.world_size)]
        dist.all_gather(parts, comm)
        return [p.cpu() for p in parts]

    def maximum(self, value: float) -> float:
        """The largest of every rank's ``value`` (on every rank)."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def close(self, finished: bool) -> None:
        if self.owns_group and dist.is_initialized():
            if finished:
                dist.barrier()  # rank 0 may still be writing the last checkpoint
            dist.destroy_process_group()


class _Loss(nn.Module):
    """The module DDP wraps: its forward is the model's training loss (DDP prepares its gradient hooks in forward)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, chain_dropout: float, rng: torch.Generator | None) -> torch.Tensor:
        return self.model.loss(images, chain_dropout, rng)
