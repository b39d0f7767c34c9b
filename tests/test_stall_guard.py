"""The stall guard of the python-backend models: a process frozen while it answers a batch (or while the batch
waited for it) stops its server; one that merely holds the GIL, or freezes only for a moment, does not
(ddn/export/stall_guard.py).

Each case runs the guard in a child process that the test freezes with SIGSTOP, as a container runtime, a debugger
or a starved CPU would.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ddn.export.stall_guard as stall_guard

# The child: a guard whose stop prints, optionally beside threads that spin without the GIL (as ONNX Runtime's
# pool does). It reads one command per batch and answers it through the guard.
CHILD = """
import hashlib, importlib.util, json, sys, threading, time
sys.modules["ddn"] = None  # the guard runs where the ddn package does not (a seed step on a GPU server)
spec = importlib.util.spec_from_file_location("stall_guard", sys.argv[1])
guard_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(guard_module)
tick_s, spinners = float(sys.argv[2]), int(sys.argv[3])

def spin():
    while True:
        hashlib.pbkdf2_hmac("sha256", b"x", b"y", 100_000)  # releases the GIL while it computes

start = time.monotonic()
sum(range(8_000_000))
sums_per_s = 8e6 / (time.monotonic() - start)
for _ in range(spinners):
    threading.Thread(target=spin, daemon=True).start()
guard = guard_module.StallGuard("m", stop=lambda message: print("STOP " + message, flush=True), tick_s=tick_s)

def respond(command):
    if command == "hold-gil":  # one C call: the GIL is not released for about a second
        wall, cpu = time.monotonic(), time.thread_time()
        sum(range(int(sums_per_s)))
        return json.dumps({"wall": time.monotonic() - wall, "cpu": time.thread_time() - cpu})
    print("started", flush=True)
    sys.stdin.readline()  # the batch: the test freezes this process, then writes a line
    return ""

print("ready", flush=True)
for command in sys.stdin:
    said = guard.answer(respond, command.strip())
    print(("answered " + said).strip(), flush=True)
"""


def start_child(tick_s: float = stall_guard.TICK_S, spinners: int = 0) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", CHILD, stall_guard.__file__, str(tick_s), str(spinners)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    assert process.stdout.readline() == "ready\n"
    return process


@pytest.fixture
def child():
    process = start_child()
    yield process
    process.kill()
    process.wait()


def freeze(process: subprocess.Popen, seconds: float, during=None) -> None:
    os.kill(process.pid, signal.SIGSTOP)
    if during:
        during()
    time.sleep(seconds)
    os.kill(process.pid, signal.SIGCONT)


def send(process: subprocess.Popen, line: str) -> None:
    process.stdin.write(line + "\n")
    process.stdin.flush()


def batch(process: subprocess.Popen, freeze_s: float) -> str:
    """One batch during which the child is frozen for ``freeze_s``; what it printed answering it."""
    send(process, "batch")
    assert process.stdout.readline() == "started\n"
    if freeze_s:
        freeze(process, freeze_s)
    send(process, "")
    return process.stdout.readline()


def assert_stopped(said: str) -> None:
    assert said.startswith(f"STOP ddn: model m: {stall_guard.FROZEN_LOG} 1.") and "server is stopped" in said


def test_a_freeze_while_answering_stops_the_server(child: subprocess.Popen) -> None:
    assert batch(child, 0) == "answered\n"
    assert_stopped(batch(child, 1.2))
    # A later batch, well after the freeze, is not blamed for it.
    assert child.stdout.readline() == "answered\n"
    time.sleep(stall_guard.BACKEND_WAIT_S)
    assert batch(child, 0) == "answered\n"


def test_a_batch_that_came_in_just_after_a_freeze_stops_the_server(child: subprocess.Popen) -> None:
    """The server may have given up on a batch it queued while the stub was frozen, and the stub reads it only
    after the thaw: a batch starting within one backend wait of a freeze is blamed for it (here 0.3 s after,
    when the guard's thread has long noticed the freeze)."""
    freeze(child, 1.2)
    time.sleep(0.3)
    assert_stopped(batch(child, 0))


def test_a_short_or_idle_freeze_does_not(child: subprocess.Popen) -> None:
    assert batch(child, 0.1) == "answered\n"
    freeze(child, 1.2)  # idle: no batch waited for the process
    time.sleep(stall_guard.BACKEND_WAIT_S + 1)
    assert batch(child, 0) == "answered\n"


def test_a_held_gil_does_not(child: subprocess.Popen) -> None:
    send(child, "hold-gil")
    said = [child.stdout.readline()]
    if said[0].startswith("STOP "):
        said.append(child.stdout.readline())
    hold = json.loads(said[-1].split(" ", 1)[1])
    assert hold["wall"] > stall_guard.FROZEN_LIMIT_S, f"the GIL was held only {hold['wall']:.2f} s: nothing tested"
    if hold["cpu"] < hold["wall"] * 0.6:  # too little CPU for the thread to tell it from a freeze
        pytest.skip(f"the machine gave the child {hold['cpu']:.2f} CPU-s of {hold['wall']:.2f} s: it was starved")
    assert len(said) == 1, said[0]


def test_threads_spinning_without_the_gil_do_not_hide_a_freeze() -> None:
    """ONNX Runtime's pool threads run right up to a freeze; in a sum over threads their CPU time would look like
    the process ran through it. Here 8 of them spin for 0.6 s, then the process freezes for 1.5 s: 2.1 s without
    a tick (the guard's own thread sleeps), over 1.05 CPU-s summed on 2 cores or more, at most 0.6 in any one."""
    process = start_child(tick_s=60, spinners=8)
    try:
        send(process, "batch")  # the last tick before the freeze (its own gap, while 8 threads spin, may read as one)
        assert process.stdout.readline() == "started\n"
        send(process, "")
        while not process.stdout.readline().startswith("answered"):
            pass
        send(process, "batch")
        assert process.stdout.readline() == "started\n"
        time.sleep(0.6)
        freeze(process, 1.5)
        send(process, "")
        said = process.stdout.readline()
        assert said.startswith(f"STOP ddn: model m: {stall_guard.FROZEN_LOG} 2."), said
    finally:
        process.kill()
        process.wait()


KILLING_CHILD = """
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("g", sys.argv[1])
g = importlib.util.module_from_spec(spec)
spec.loader.exec_module(g)
g.kill_server("ddn: stopping", os.getppid())
print("kill_server returned", file=sys.stderr)
"""


def stand_in_server(log: Path) -> str:
    """A parent that starts a child calling kill_server on it, then waits; SIGTERM ends it with status 7, as
    tritonserver's handler shuts it down."""
    return f"""
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
subprocess.Popen([sys.executable, "-c", {KILLING_CHILD!r}, {stall_guard.__file__!r}], stderr=open({str(log)!r}, "w"))
time.sleep(60)
"""


def test_kill_server_kills_the_parent_says_why_and_never_returns(tmp_path: Path) -> None:
    """The stub's parent is tritonserver: the guard's default stop SIGKILLs it (here a stand-in parent)."""
    log = tmp_path / "log"
    parent = subprocess.Popen([sys.executable, "-c", stand_in_server(log)])
    assert parent.wait(timeout=30) == -signal.SIGKILL
    time.sleep(0.5)  # the child's exit
    assert log.read_text() == "ddn: stopping\n"


def test_kill_server_stops_a_server_that_is_its_containers_pid_1(tmp_path: Path) -> None:
    """In the shipped Kubernetes pod tritonserver is PID 1 of its namespace, which drops a SIGKILL sent from
    inside it: the guard's SIGTERM shuts it down."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-Urpf", "true"]).returncode != 0:
        pytest.skip("no unprivileged PID namespaces here (unshare -Urpf)")
    log = tmp_path / "log"
    server = subprocess.run(["unshare", "-Urpf", sys.executable, "-c", stand_in_server(log)],
                            timeout=30)
    assert server.returncode == 7
    time.sleep(0.5)
    assert log.read_text() == "ddn: stopping\n"


def test_an_answer_that_raises_is_checked_too() -> None:
    """An exception becomes an (error) answer the backend hands on like any other. Sleeping looks like a freeze
    to the guard (no thread runs), which stands in for one here; its own thread does not tick (60 s)."""
    stops = []
    guard = stall_guard.StallGuard("m", stop=stops.append, tick_s=60)

    def respond(requests):
        time.sleep(0.7)
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        guard.answer(respond, [])
    assert len(stops) == 1 and stall_guard.FROZEN_LOG in stops[0]
