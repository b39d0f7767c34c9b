"""Split-and-prune, the one place that owns it: after each step, split a layer's most used branch into its least used
one when usage is uneven, so every branch stays in use; the weight rows, optimizer state and weight average follow
(rule and details: docs/training.md).
"""
from __future__ import annotations

from typing import Callable, Iterable, Protocol

import torch
from torch import nn


class BranchUsage(nn.Module):
    """Usage statistics of K nodes, cumulative and identical on every rank; a step's pairs are folded in by
    :func:`split_and_prune_` (summed over ranks when training in parallel).
    """

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.register_buffer("count", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("near2", torch.zeros(k, k, dtype=torch.float64))
        self._pending: list[torch.Tensor] = []  # [n, 2] (nearest, second nearest) per record() call

    @torch.no_grad()
    def record(self, distances: torch.Tensor) -> None:
        """Record the nearest and second-nearest node of each sample from distances [B, K]."""
        if self.k < 2:
            nearest = torch.zeros(distances.shape[0], 1, dtype=torch.long, device=distances.device)
            self._pending.append(nearest.expand(-1, 2))
            return
        self._pending.append(distances.topk(2, dim=1, largest=False).indices)

    def step_counts(self) -> torch.Tensor:
        """How often each node was the nearest in the current (not yet folded) step, float64 [K]."""
        count = torch.zeros_like(self.count)
        self._add_pending(count, None)
        return count

    def _add_pending(self, count: torch.Tensor, near2: torch.Tensor | None) -> None:
        if not self._pending:
            return
        pairs = torch.cat(self._pending).to(count.device)
        ones = torch.ones(len(pairs), dtype=count.dtype, device=count.device)
        count.index_add_(0, pairs[:, 0], ones)
        if near2 is not None and self.k >= 2:
            near2.view(-1).index_add_(0, pairs[:, 0] * self.k + pairs[:, 1], ones)

    @torch.no_grad()
    def fold_step(self, all_reduce: Callable[[torch.Tensor], None] | None = None) -> None:
        """Add this step's statistics (summed over ranks by ``all_reduce``) to the cumulative ones."""
        if all_reduce is None:
            self._add_pending(self.count, self.near2)
        else:
            count, near2 = torch.zeros_like(self.count), torch.zeros_like(self.near2)
            self._add_pending(count, near2)
            all_reduce(count)
            all_reduce(near2)
            self.count += count
            self.near2 += near2
        self._pending.clear()

    def probabilities(self) -> torch.Tensor:
        total = self.count.sum()
        return self.count / total if total > 0 else torch.full_like(self.count, 1.0 / self.k)

    def entropy(self) -> float:
        """Usage entropy in nats (log K when every node is used equally)."""
        p = self.probabilities()
        return float(-(p * p.clamp_min(1e-30).log()).sum())


class NodeSet(Protocol):
    weight: nn.Parameter
    usage: BranchUsage


def should_split(p: torch.Tensor) -> bool:
    """The split rule on usage probabilities p [K]."""
    k = p.numel()
    if k < 2:
        return False
    p_max, p_min = float(p.max()), float(p.min())
    return p_max - p_min > 1.0 / k or p_min < 0.5 / k


@torch.no_grad()
def hand_on_count_(usage: BranchUsage, split: int, pruned: int) -> None:
    """Update count and near2 for splitting node ``split`` into node ``pruned``."""
    count, near2 = usage.count, usage.near2
    share = near2[pruned].clone()
    share[pruned] = 0
    if share.sum() <= 0:  # never seen as anyone's runner-up: spread evenly over the others
        share = torch.ones_like(share)
        share[pruned] = 0
    count += count[pruned] * share / share.sum()
    count[pruned] = count[split] / 2
    count[split] = count[split] / 2
    # The pruned node restarts as a copy of the split node, so it inherits half of its runner-up row.
    near2[:, pruned] = 0
    near2[pruned] = near2[split] / 2
    near2[split] = near2[split] / 2


@torch.no_grad()
def copy_node_(weight: nn.Parameter, optimizer: torch.optim.Optimizer | None, src: int, dst: int,
               followers: Iterable[torch.Tensor] = ()) -> None:
    """Copy node ``src`` into node ``dst`` in the weight, every per-row optimizer state tensor and ``followers``."""
    for tensor in (weight, *followers):
        tensor[dst] = tensor[src]
    if optimizer is None:
        return
    for key, value in optimizer.state.get(weight, {}).items():
        if torch.is_tensor(value) and value.shape == weight.shape:
            value[dst] = value[src]
        elif torch.is_tensor(value) and value.numel() == 1:
            continue  # shared scalars such as Adam's step count are per parameter, not per row
        else:
            raise TypeError(
                f"cannot copy optimizer state {key!r} of shape {tuple(getattr(value, 'shape', ()))} "
                f"row-wise for a weight of shape {tuple(weight.shape)}: "
                f"split-and-prune needs per-parameter state shaped like the parameter"
            )


@torch.no_grad()
def split_and_prune_(
    node_sets: Iterable[NodeSet],
    optimizer: torch.optim.Optimizer | None = None,
    all_reduce: Callable[[torch.Tensor], None] | None = None,
    follower_of: Callable[[nn.Parameter], torch.Tensor | None] | None = None,
) -> int:
    """Fold this step's usage (summed over ranks through ``all_reduce``) into the statistics and split at most once per
    node set, copying ``follower_of(weight)``'s rows too; returns the number of splits.
    """
    splits = 0
    for nodes in node_sets:
        usage = nodes.usage
        usage.fold_step(all_reduce)
        if usage.count.sum() <= 0:
            continue
        p = usage.probabilities()
        if not should_split(p):
            continue
        split, pruned = int(p.argmax()), int(p.argmin())
        if split == pruned:
            continue
        hand_on_count_(usage, split, pruned)
        follower = follower_of(nodes.weight) if follower_of else None
        copy_node_(nodes.weight, optimizer, split, pruned, () if follower is None else (follower,))
        splits += 1
    return splits
