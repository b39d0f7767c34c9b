"""The learning rate over a run: constant, then a linear fall to zero over the run's last ``decay`` share. A run's
progress is the larger of its share of ``steps`` and its share of the time budget (``--minutes``), so a run that
time ends still anneals before it stops (docs/training.md).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field


def lr_factor(progress: float, decay: float) -> float:
    """The multiple of the base learning rate at ``progress`` in [0, 1]."""
    if decay <= 0:
        return 1.0
    return min(1.0, max(0.0, (1.0 - progress) / decay))


@dataclass
class RunClock:
    """A run's training seconds across invocations (``seconds_before`` from its checkpoint) and this invocation's
    budget; the time budget ends at ``seconds_before + budget``.
    """

    seconds_before: float = 0.0
    budget: float | None = None
    start: float = field(default_factory=time.perf_counter)

    @property
    def timed(self) -> bool:
        """Whether the run has ever had a time budget."""
        return self.budget is not None or self.seconds_before > 0

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.start

    def time_progress(self) -> float:
        """Share of the time budget used (0 without one)."""
        if self.budget is None:
            return 0.0
        return self.seconds() / max(self.seconds_before + self.budget, 1e-9)
