"""retain_freed_memory: a block freed and asked for again costs no page faults (glibc's default maps it afresh)."""
import subprocess
import sys

import pytest

CHILD = """
import resource, sys
import numpy as np
from ddn.training.allocator import retain_freed_memory
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        np.ones(48 * 2 ** 20 // 8).sum()  # 48 MiB, over glibc's largest mmap threshold: a fresh mapping each time
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
default = faults()
assert retain_freed_memory()
faults()  # the first block on the heap faults once
print(default, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_blocks_are_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout
    default, retained = map(int, out.split())
    assert default >= 10 * 24  # at least one fault per page of every block, 2 MiB pages included
    assert retained < default / 20
