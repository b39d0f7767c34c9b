"""Running the commands a stage needs, with their output in the log, and the two ways a stage fails."""
from __future__ import annotations

import shlex
import subprocess

from benchmarks.gpu_check.settings import ROOT


class CheckFailed(Exception):
    """A stage that ran but whose numbers fail its check; ``result`` still goes into the JSON."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def shell(command: list[str]) -> str:
    return " ".join(shlex.quote(str(part)) for part in command)


class CommandFailed(RuntimeError):
    """A command a stage ran exited non-zero; the message holds its last line of output."""


def run_command(command: list[str]) -> str:
    """Run ``command`` from the checkout, its output copied to this process's (the log); returns the output.

    Raises CommandFailed naming the program and its last line of output.
    """
    print(f"$ {shell(command)}", flush=True)
    lines = []
    with subprocess.Popen([str(c) for c in command], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, errors="replace") as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    if process.returncode != 0:
        program = f"python -m {command[2]}" if command[1] == "-m" else str(command[0])
        last = next((line.strip() for line in reversed(lines) if line.strip()), "no output")
        raise CommandFailed(f"{program} exited with {process.returncode}: {last}")
    return "".join(lines)
