"""Progress for people: a redrawn bar on a terminal, plain timestamped lines anywhere else (CI, Kubernetes logs).

A bar redraws itself with carriage returns, which a piped log keeps as one
unreadable line; off a terminal the commands print one line per interval instead.
"""
from __future__ import annotations

import sys
from datetime import datetime, timezone


def utc_timestamp() -> str:
    """Now as ISO 8601 UTC with millisecond precision, e.g. ``2026-01-31T12:00:00.123Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def on_terminal() -> bool:
    """Whether stderr (where progress goes) is a terminal, so a bar can redraw in place."""
    return sys.stderr.isatty()


def progress_line(message: str) -> None:
    """Print ``<UTC timestamp> <message>`` on stderr, one line, no carriage return."""
    print(f"{utc_timestamp()} {message}", file=sys.stderr, flush=True)
