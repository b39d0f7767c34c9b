"""Stops the Triton server when the python-backend process answering a batch was frozen (standard library only:
ddn-export copies this file beside a seed step's model.py, which runs without the ddn package).

Triton's python backend (2.51, and its current source) waits for a batch's answer in 1 s slices and fails the
batch when the stub process showed no sign of life in one of them. The answer the stub sends later stays queued
and is handed to the *next* batch: the wrong images, with no error, or a crashed server. A frozen stub (SIGSTOP, a
starved or throttled CPU, a paused container) cannot tell whether the server gave up on its batch, so it does not
answer: it kills the server. A dead server is a fault clients handle (they resend elsewhere, Kubernetes restarts
the pod); a wrong image is not.
"""
import os
import signal
import sys
import threading
import time

TICK_S = 0.1
# The backend's health thread marks the stub alive every 0.3 s and the server gives up after 1 s without a mark,
# so a freeze has to last about 0.7 s to fail a batch; 0.5 s leaves a margin.
FROZEN_LIMIT_S = 0.5


def kill_server(message):
    """Write ``message`` to the server log and SIGKILL the server (the stub's parent): no answer leaves it after."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os.kill(os.getppid(), signal.SIGKILL)


class StallGuard:
    """Notices when this whole process stopped running (wall time passed, CPU time did not) and stops the server
    when that happened while a batch was being answered (:meth:`check`).

    A thread that holds the GIL for a while is not a freeze: the process still runs (and the backend's C++ health
    thread with it), so only a gap with little CPU time counts.
    """

    def __init__(self, model_name, stop=kill_server, tick_s=TICK_S, limit_s=FROZEN_LIMIT_S):
        self.model_name, self.stop, self.tick_s, self.limit_s = model_name, stop, tick_s, limit_s
        self._lock = threading.Lock()
        self._last_tick = (time.monotonic(), time.process_time())
        self._last_freeze = (0.0, 0.0)  # (monotonic time it was noticed, seconds) of the latest freeze
        threading.Thread(target=self._watch, name="ddn-stall-guard", daemon=True).start()

    def _tick(self):
        """Note a freeze since the last tick: wall time passed with little CPU time (the process did not run)."""
        with self._lock:
            now = (time.monotonic(), time.process_time())
            wall, cpu = now[0] - self._last_tick[0], now[1] - self._last_tick[1]
            if wall > self.limit_s and cpu < wall / 2:
                self._last_freeze = (now[0], wall)
            self._last_tick = now

    def _watch(self):
        while True:
            time.sleep(self.tick_s)
            self._tick()

    def frozen_since(self, start):
        """Seconds of the latest freeze noticed after monotonic time ``start`` (0: none)."""
        self._tick()  # a freeze this thread is the first to run after is noticed now, not by the next batch
        noticed, seconds = self._last_freeze
        return seconds if noticed > start else 0.0

    def check(self, start):
        """Call before returning a batch's answers, with the monotonic time the batch came in."""
        frozen = self.frozen_since(start)
        if frozen:
            self.stop(f"ddn: model {self.model_name}: this process was frozen for {frozen:.1f} s while answering a "
                      "batch; the python backend may hand that answer to the next batch, so the server is stopped "
                      "instead (restart it)")
