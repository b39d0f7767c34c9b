"""Running ddn-serve as a user does, and reading which sockets a process listens on."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from ddn.serving.triton_server import Address, TritonServer


def take_kept_log(message: str) -> str:
    """The text of the server log a failure message names as kept; the copy is removed (tests leave no files)."""
    match = re.search(r"its log is kept at (\S+)", message)
    assert match, message
    kept = Path(match.group(1))
    try:
        return kept.read_text()
    finally:
        kept.unlink()


def listening_addresses() -> dict[int, set[str]]:
    """Port -> local addresses (hex, as in /proc/net) of this namespace's listening TCP sockets."""
    listening: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            if state == "0A":  # TCP_LISTEN
                address, port = local.split(":")
                listening.setdefault(int(port, 16), set()).add(address)
    return listening


# ddn-serve with SIGINT handled, as a terminal's shell starts it (a background pytest hands SIGINT down
# ignored). Not through a preexec_fn: with grpcio running in this process, a fork()ed child can abort
# before it execs (see ddn.serving.triton_server._dying_with_parent).
RUN_WITH_SIGINT = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                   "sys.argv[0] = 'ddn-serve'; runpy.run_module('ddn.serving.serve_cli', run_name='__main__')")


def start_serve_cli(repository: Path, *args: str) -> tuple[subprocess.Popen, str, TritonServer]:
    """A ddn-serve process on free ports, once it says it serves: the process, what it printed, its ports."""
    # The CLI's defaults are Triton's fixed ports 8000-8002; borrow three free ones
    # from a server object that is never started.
    ports = TritonServer(repository, http=Address(), metrics=Address())
    optional = [*(["--http-port", str(ports.http_port)] if "--http" in args else []),
                *(["--metrics-port", str(ports.metrics_port)] if "--metrics" in args else [])]
    cli = subprocess.Popen(
        [sys.executable, "-c", RUN_WITH_SIGINT, "--repository", str(repository),
         "--grpc-port", str(ports.grpc_port), *optional, *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = ""
    deadline = time.monotonic() + 60
    while "press Ctrl-C" not in output and cli.poll() is None and time.monotonic() < deadline:
        output += cli.stdout.readline()
    return cli, output, ports


def kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def process_group_members(pgid: int) -> list[int]:
    """Ids of the live processes in process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def listening_sockets(pids: list[int]) -> set[tuple[str, int]]:
    """(local address in /proc/net hex, port) of every TCP socket in LISTEN state that ``pids`` hold open."""
    inodes: set[str] = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except FileNotFoundError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # TCP_LISTEN
                address, port = fields[1].split(":")
                found.add((address, int(port, 16)))
    return found
