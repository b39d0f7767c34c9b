"""serving/ and the client are torch-free: every module imports with torch unimportable, none names ddn.training."""
from __future__ import annotations

import re
from pathlib import Path

import ddn.serving
from no_torch import run_without_torch

SERVING = Path(ddn.serving.__file__).parent
CLIENT_MODULES = ("ddn.conditions", "ddn.condition_cli", "ddn.repository_contract", "ddn.codes", "ddn.images")


def serving_modules() -> list[str]:
    return sorted(f"ddn.serving.{p.stem}" for p in SERVING.glob("*.py") if p.stem != "__init__")


def test_every_serving_module_imports_without_torch() -> None:
    modules = [*serving_modules(), *CLIENT_MODULES]
    assert {"ddn.serving.client", "ddn.serving.generate_cli", "ddn.serving.onnx_model"} <= set(modules)
    code = ("import importlib\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'ddn.training', "
            "'ddn.export'))))\n")
    result = run_without_torch(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    # The blocker works: the same process cannot import torch.
    blocked = run_without_torch("import torch")
    assert blocked.returncode != 0 and "torch is not installed here" in blocked.stderr


def test_no_serving_module_mentions_training() -> None:
    sources = sorted(SERVING.rglob("*.py"))
    assert len(sources) >= 10
    pattern = re.compile(r"ddn\.training|from \.\.training|import torch|from torch")
    offenders = [f"{p.relative_to(SERVING)}:{n}" for p in sources
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_the_python_twins_import_chain_stays_numpy_only() -> None:
    """The twin's model.py imports repository_contract (and through it the condition registry) in Triton's Python."""
    result = run_without_torch("import ddn.repository_contract\n"
                               "print(sorted(m for m in ('PIL', 'click', 'onnxruntime') if m in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
