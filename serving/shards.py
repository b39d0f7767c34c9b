"""Split one generation run across N machines: ``ddn-generate --shard I/N``.

Shard I of N takes the seeds s with ``s % N == I`` (modulo by seed, not
contiguous ranges): every shard gets an even share of any seed range, a
shard's seeds are a ``range`` however many there are, and whichever seeds a
run covers, the N shards together write each of them exactly once. A shard
that is rerun skips the files it already wrote, so a Kubernetes Indexed Job
whose pod I runs shard I of N completes the set however often its pods restart.
"""
from __future__ import annotations

from dataclasses import dataclass

import click


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def seeds(self, seeds: range) -> range:
        """The seeds of ``seeds`` (step 1) that belong to this shard."""
        first = seeds.start + (self.index - seeds.start) % self.count
        return range(first, max(first, seeds.stop), self.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


class ShardParam(click.ParamType):
    """``I/N`` with N >= 1 and 0 <= I < N."""

    name = "I/N"

    def convert(self, value, param, ctx) -> Shard:
        if isinstance(value, Shard):
            return value
        index, sep, count = str(value).partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            self.fail(f"{value!r} is not I/N (shard I of N, e.g. 0/4)", param, ctx)
        shard = Shard(int(index), int(count))
        if shard.count < 1 or shard.index >= shard.count:
            self.fail(f"{value!r}: need N >= 1 and 0 <= I < N", param, ctx)
        return shard
