"""Checks of what a command line prints when it refuses its input."""
from __future__ import annotations


def one_line_error(result) -> str:
    """The single line a command printed when it stopped with exit code 1 (a click error, no traceback)."""
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def usage_error(result) -> str:
    """The error line of a command refused with exit code 2 (click adds its usage lines around it)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    return lines[0]
