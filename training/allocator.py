"""The C allocator's policy for a training process: keep freed memory instead of handing it back to the kernel.

glibc's malloc serves blocks over its mmap threshold (at most 32 MiB) from fresh mappings and gives the top of its
heap back once more than a threshold is free. A training step allocates and frees the same tens of megabytes every
step (activations, oneDNN's workspaces, one of which is 38 MiB at 32x32), so each step took about 5,000 page faults
of freshly zeroed pages: a fifth of the `cpu` preset's step time on this project's 2-core machine
(docs/benchmarks.md, "Training speed and quality").
"""
from __future__ import annotations

import ctypes
import sys

# mallopt() parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_FREE_BYTES = 2 ** 31 - 1  # the largest trim threshold mallopt takes: never shrink the heap in practice


def retain_freed_memory() -> bool:
    """Serve every block from malloc's heap and keep the heap's free memory for the next step.

    The process keeps its peak memory until it exits. Returns False where the C library is not glibc (musl's
    mallopt does nothing, other systems have none), which changes speed only.
    """
    if not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_FREE_BYTES) == 1
