"""The client install: ``pip install "ddn-serve[client]"`` into a fresh virtualenv brings no torch and generates.

The package is built from this checkout's files (copied, so the build leaves
the checkout alone) and installed with its dependencies by pip, as a user
would; the server runs from the test's own environment on a tiny export.
Through the server (--url) and through ONNX Runtime (--repository), the
client venv's ddn-generate writes the same PNGs as this process's reference.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="needs the nvidia-pytriton wheel (pip install 'ddn-serve[serving]')")

from ddn.images import load_png  # noqa: E402
from ddn.serving.onnx_model import OnnxModel  # noqa: E402
from ddn.serving.repository_view import cpu_repository_view  # noqa: E402
from ddn.serving.triton_server import TritonServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FILES = ("pyproject.toml", "README.md", "ddn", "training", "export", "serving")
NAME = "tiny"
COUNT = 5


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("client_install")
    source = folder / "source"
    source.mkdir()
    for name in PACKAGE_FILES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copyfile
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (ROOT / name).is_dir() else {}))
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{source}[client]"],
                             capture_output=True, text=True, timeout=540)
    assert install.returncode == 0, install.stderr[-2000:]
    return venv


@pytest.fixture(scope="module")
def repository(tiny_generation_repository: Path) -> Path:
    return tiny_generation_repository


def run_in(venv: Path, *args: str) -> subprocess.CompletedProcess:
    """A program of the venv, run outside the checkout (whose ddn/ folder would shadow the installed package)."""
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True, timeout=300,
                          cwd=venv)


def test_the_client_install_has_no_torch(client_venv: Path) -> None:
    result = run_in(client_venv, "python", "-c", "import torch")
    assert result.returncode == 1 and "No module named 'torch'" in result.stderr
    # Everything a client path imports is there without torch.
    result = run_in(client_venv, "python", "-c", "import ddn.serving.client, ddn.serving.generate_cli, "
                                                 "ddn.serving.onnx_model, ddn.serving.repository_view")
    assert result.returncode == 0, result.stderr


def test_client_install_generates_through_the_server_and_onnx_runtime(client_venv: Path, repository: Path,
                                                                      tmp_path: Path) -> None:
    reference = OnnxModel.from_repository(repository, NAME).generate(seeds=range(COUNT))
    with cpu_repository_view(repository) as view, TritonServer(view) as server:
        remote = run_in(client_venv, "ddn-generate", "--url", server.grpc_url, "--model", NAME, "--n", str(COUNT),
                        "--out", str(tmp_path / "remote"), "--no-progress")
    local = run_in(client_venv, "ddn-generate", "--repository", str(repository), "--model", NAME, "--n", str(COUNT),
                   "--out", str(tmp_path / "local"), "--no-progress")
    for result in (remote, local):
        assert result.returncode == 0, result.stderr
    for seed in range(COUNT):
        name = f"{seed:06d}.png"
        assert (tmp_path / "remote" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
        np.testing.assert_array_equal(load_png(tmp_path / "local" / name), reference[seed])
