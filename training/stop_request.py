"""Ctrl-C and SIGTERM during training: finish the step, write a checkpoint, then stop."""
from __future__ import annotations

import signal
import threading
from typing import Any


class StopRequest:
    """Turns the first Ctrl-C / SIGTERM into ``requested = True`` while active (single process, main thread).

    A second signal gets the handler that was there before: it stops at once.
    """

    def __init__(self, active: bool):
        self.requested = False
        self.active = active and threading.current_thread() is threading.main_thread()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if self.active:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signum, self._previous[signum])

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
