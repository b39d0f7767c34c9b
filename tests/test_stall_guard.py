"""The stall guard of the python-backend models: a process frozen while it answers a batch stops its server; one
that merely holds the GIL, or freezes only for a moment, does not (ddn/export/stall_guard.py).

Each case runs the guard in a child process that the test freezes with SIGSTOP, as a container runtime, a debugger
or a starved CPU would.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ddn.export.stall_guard as stall_guard

# The child: a guard whose stop prints; it reads one command per batch and checks the batch when told.
CHILD = """
import importlib.util, sys, time
sys.modules["ddn"] = None  # the guard runs where the ddn package does not (a seed step on a GPU server)
spec = importlib.util.spec_from_file_location("stall_guard", sys.argv[1])
guard_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(guard_module)
guard = guard_module.StallGuard("m", stop=lambda message: print("STOP " + message, flush=True))
print("ready", flush=True)
for command in sys.stdin:
    start = time.monotonic()
    if command.strip() == "hold-gil":  # one C call: the GIL is not released for about a second
        sum(range(80_000_000))
    else:
        sys.stdin.readline()  # the batch: the test freezes this process, then writes a line
    guard.check(start)
    print("answered", flush=True)
"""


@pytest.fixture
def child():
    process = subprocess.Popen([sys.executable, "-c", CHILD, stall_guard.__file__], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, bufsize=1)
    assert process.stdout.readline() == "ready\n"
    yield process
    process.kill()
    process.wait()


def batch(child: subprocess.Popen, freeze_s: float) -> str:
    """One batch during which the child is frozen for ``freeze_s``; what it printed answering it."""
    child.stdin.write("batch\n")
    child.stdin.flush()
    time.sleep(0.2)
    if freeze_s:
        os.kill(child.pid, signal.SIGSTOP)
        time.sleep(freeze_s)
        os.kill(child.pid, signal.SIGCONT)
    child.stdin.write("\n")
    child.stdin.flush()
    return child.stdout.readline()


def test_a_freeze_while_answering_stops_the_server(child: subprocess.Popen) -> None:
    assert batch(child, 0) == "answered\n"
    said = batch(child, 1.2)
    assert said.startswith("STOP ddn: model m: this process was frozen for 1.") and "server is stopped" in said
    # A later batch that ran throughout is not blamed for the earlier freeze.
    assert child.stdout.readline() == "answered\n"
    assert batch(child, 0) == "answered\n"


def test_a_short_freeze_or_a_held_gil_does_not(child: subprocess.Popen) -> None:
    assert batch(child, 0.25) == "answered\n"
    child.stdin.write("hold-gil\n")
    child.stdin.flush()
    assert child.stdout.readline() == "answered\n"


def test_kill_server_kills_the_parent_and_says_why(tmp_path: Path) -> None:
    """The stub's parent is tritonserver: the guard's default stop SIGKILLs it (here a stand-in parent)."""
    log = tmp_path / "log"
    parent = subprocess.Popen([sys.executable, "-c", f"""
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import importlib.util, sys; spec = importlib.util.spec_from_file_location('g', sys.argv[1]); g = importlib.util.module_from_spec(spec); spec.loader.exec_module(g); g.kill_server('ddn: stopping')", {stall_guard.__file__!r}], stderr=open({str(log)!r}, 'w'))
time.sleep(60)
"""])
    assert parent.wait(timeout=30) == -signal.SIGKILL
    assert log.read_text() == "ddn: stopping\n"
