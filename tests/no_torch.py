"""Run Python in a subprocess where ``import torch`` fails, as on a client install without torch."""
from __future__ import annotations

import subprocess
import sys

# Installed first on sys.meta_path, before any other import can reach torch.
BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is not installed here (blocked: {name})")
sys.meta_path.insert(0, _NoTorch())
"""


def run_without_torch(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``code`` run by this interpreter with torch unimportable; the finished process (output as text)."""
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True,
                          timeout=timeout)


def module_main_without_torch(module: str, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m module args...`` with torch unimportable."""
    code = f"import runpy; sys.argv = {[module, *args]!r}; runpy.run_module({module!r}, run_name='__main__')"
    return run_without_torch(code, timeout)
