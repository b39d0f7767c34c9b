"""Temporary names that say which process made them (pid and start time), so the next run can remove what a killed run
left while never touching a live run's files (docs/export.md).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_PROC = Path("/proc")
_TAG = re.compile(r"(\d+)-(\d+)-")


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot); None if no such process runs."""
    if not (_PROC / "self" / "stat").is_file():  # no /proc: whether it runs, without a start time
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # another user's process
            pass
        return 0
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Field 2, the command name, is in parentheses and may hold spaces; the start time is field 22.
    return int(stat.rsplit(")", 1)[1].split()[19])


def owner_tag() -> str:
    """This process's tag, ``<pid>-<start>``."""
    pid = os.getpid()
    return f"{pid}-{_start_ticks(pid)}"


def tagged(prefix: str) -> str:
    """The start of a temporary name for this process: ``prefix`` + owner tag + ``-``."""
    return f"{prefix}{owner_tag()}-"


def is_stale(path: Path, prefix: str) -> bool:
    """Whether ``path`` is named ``prefix<tag>-...``, belongs to this user, and its owner process is gone."""
    name = Path(path).name
    match = _TAG.match(name, len(prefix)) if name.startswith(prefix) else None
    if match is None:
        return False
    try:
        uid = Path(path).lstat().st_uid
    except FileNotFoundError:
        return False
    return uid == os.getuid() and _start_ticks(int(match[1])) != int(match[2])


def remove_stale(folder: str | Path, prefix: str) -> list[Path]:
    """Delete the entries of ``folder`` named ``prefix<tag>-...`` whose owner is gone; returns what was removed."""
    try:
        entries = list(Path(folder).iterdir())
    except OSError:  # no such folder (yet), or not readable: nothing of ours to clean
        return []
    removed = []
    for path in entries:
        if not is_stale(path, prefix):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
