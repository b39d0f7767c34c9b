"""The mode a new file gets from the process umask, for files created by other means than open().

``tempfile.mkstemp`` creates its file 0600 whatever the umask: right for a
private scratch file, wrong for one that is renamed into place as a result
(a checkpoint shared with a container running as another user must be
readable by it). Such a file is given the mode open() would have given it.
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
