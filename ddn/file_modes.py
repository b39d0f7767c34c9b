"""The mode a new file would get from open() under the umask, for files made by ``tempfile.mkstemp`` (always 0600) and
then renamed into place as a result another user must read.
"""
from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """This process's umask, read without changing it where Linux reports it (os.umask is a set-and-get)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permission bits open() gives a new file: 0666 less the umask."""
    return 0o666 & ~current_umask()
