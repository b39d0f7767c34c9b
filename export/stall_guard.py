"""Stops the Triton server when the python-backend process answering a batch was frozen (standard library only:
ddn-export copies this file beside a seed step's model.py, which runs without the ddn package).

Triton's python backend (2.51, and its current source) waits for a batch's answer in 1 s slices and fails the
batch when the stub process showed no sign of life in one of them. The answer the stub sends later stays queued
and is handed to the *next* batch: the wrong images, with no error, or a crashed server. A frozen stub (SIGSTOP, a
starved or throttled CPU, a paused container) cannot tell whether the server gave up on its batch, so it does not
answer: it stops the server and exits. A dead server is a fault clients handle (they resend elsewhere, Kubernetes
restarts the pod); a wrong image is not.
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
# A batch the server queued while this process was frozen is read only after the thaw, so a freeze noticed up to
# one backend wait before a batch came in is that batch's freeze too.
BACKEND_WAIT_S = 1.0
FROZEN_LOG = "this process was frozen for"  # what the server log says when the guard stopped it
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def clock():
    """Seconds on CLOCK_BOOTTIME: it runs on while the machine is suspended, as the backend's wall-clock waits do."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def busiest_thread_cpu(before, after):
    """The most CPU seconds any one thread used between two :func:`thread_cpu_seconds` readings."""
    return max((cpu - before.get(tid, 0.0) for tid, cpu in after.items()), default=0.0)


def thread_cpu_seconds():
    """CPU seconds of each thread of this process by thread id (from /proc: native threads too, such as ONNX
    Runtime's pool).
    """
    seconds = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):  # the thread ended; other errors leave the reading unfinished
            continue
        seconds[tid] = (int(fields[11]) + int(fields[12])) / _TICKS_PER_S  # utime + stime
    return seconds


def kill_server(message, server_pid):
    """Write ``message`` to the server log, stop the server and exit this process: never returns, so the batch's
    answer never leaves.
    """
    try:
        try:
            sys.stderr.write(message + "\n")
            sys.stderr.flush()
        except Exception:  # a broken log must not keep the server up
            pass
        if os.getppid() == server_pid:  # otherwise the server is gone already and the pid may be another's
            os.kill(server_pid, signal.SIGKILL)
            # As a container's PID 1 (tritonserver as the pod's command) the server ignores a SIGKILL sent from
            # inside its namespace; SIGTERM it handles: it shuts down.
            os.kill(server_pid, signal.SIGTERM)
    finally:
        os._exit(1)


class StallGuard:
    """Notices when this whole process stopped running (wall time passed and no thread of it ran) and stops the
    server when that happened while a batch was being answered (:meth:`answer`).

    A thread that holds the GIL for a while is not a freeze: the process still runs that thread (and the
    backend's C++ health thread), so a gap counts only when every thread used little CPU time in it. The busiest
    thread, not the sum, decides: ONNX Runtime's pool threads spin around a freeze and would hide it in a sum.
    """

    def __init__(self, model_name, stop=None, tick_s=TICK_S, limit_s=FROZEN_LIMIT_S):
        server_pid = os.getppid()  # the stub's parent is tritonserver; read now, before it can be reparented
        self.model_name, self.tick_s, self.limit_s = model_name, tick_s, limit_s
        self.stop = stop or (lambda message: kill_server(message, server_pid))
        self._lock = threading.Lock()
        self._last_tick = (clock(), thread_cpu_seconds())
        self._last_freeze = (0.0, 0.0)  # (clock time it was noticed, seconds) of the latest freeze
        threading.Thread(target=self._watch, name="ddn-stall-guard", daemon=True).start()

    def _tick(self):
        """Note a freeze since the last tick: wall time passed with little CPU time in every thread."""
        with self._lock:
            try:
                now = (clock(), thread_cpu_seconds())
            except OSError:  # an unfinished reading cannot judge the gap: the next one starts afresh
                self._last_tick = (clock(), None)
                return
            wall = now[0] - self._last_tick[0]
            if self._last_tick[1] is not None and wall > self.limit_s \
                    and busiest_thread_cpu(self._last_tick[1], now[1]) < wall / 2:
                self._last_freeze = (now[0], wall)
            self._last_tick = now

    def _watch(self):
        while True:  # if this thread died, idle time would later read as a freeze
            time.sleep(self.tick_s)
            try:
                self._tick()
            except Exception as exc:
                sys.stderr.write(f"ddn: model {self.model_name}: stall guard tick failed: {exc!r}\n")

    def frozen_since(self, start):
        """Seconds of the latest freeze noticed since a backend wait before clock time ``start`` (0: none)."""
        self._tick()  # a freeze this thread is the first to run after is noticed now, not by the next batch
        noticed, seconds = self._last_freeze
        return seconds if noticed > start - BACKEND_WAIT_S else 0.0

    def answer(self, respond, requests):
        """``respond(requests)``, unless this process was frozen while (or just before) it ran: then the server is
        stopped and the answer not returned.
        """
        start = clock()
        try:
            return respond(requests)
        finally:  # an exception becomes an answer too (an error one): checked the same way
            frozen = self.frozen_since(start)
            if frozen:
                self.stop(f"ddn: model {self.model_name}: {FROZEN_LOG} {frozen:.1f} s while answering a batch; "
                          "the python backend may hand that answer to the next batch, so the server is stopped "
                          "instead (restart it)")
