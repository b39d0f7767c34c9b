"""Files the tools write follow the umask: a checkpoint or export shared with another user must be readable by it."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from ddn.export.exporter import ModelExport
from ddn.training.checkpoint import load_generator, save_checkpoint
from ddn.training.networks import SingleShotGenerator


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def modes(root: Path) -> dict[str, int]:
    """Relative path -> permission bits of ``root`` and everything under it (links not followed)."""
    paths = [root, *root.rglob("*")]
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in paths if not p.is_symlink()}


def test_checkpoint_and_export_honour_the_umask(tmp_path: Path, umask_022: None) -> None:
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.safetensors"
    save_checkpoint(checkpoint, SingleShotGenerator(image_size=8, channels=16, k=8))
    assert stat.S_IMODE(checkpoint.stat().st_mode) == 0o644
    save_checkpoint(checkpoint, load_generator(checkpoint))  # an overwrite too
    assert stat.S_IMODE(checkpoint.stat().st_mode) == 0o644
    repository = tmp_path / "model_repository"
    ModelExport(checkpoint, "tiny", repository, max_batch=2).write_onnx(["generate"])
    written = modes(repository)
    assert len(written) > 3 and any(name.endswith("model.onnx") for name in written), written
    wrong = {name: oct(mode) for name, mode in written.items()
             if mode != (0o755 if (repository / name).is_dir() else 0o644)}
    assert not wrong, wrong


def test_a_stricter_umask_is_honoured_too(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        save_checkpoint(tmp_path / "c.safetensors", SingleShotGenerator(image_size=8, channels=16, k=8))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "c.safetensors").stat().st_mode) == 0o640
