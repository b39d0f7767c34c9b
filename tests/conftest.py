"""Fixtures shared by test modules."""
import tempfile
from pathlib import Path

import pytest


def _refuses_new_files(folder: Path) -> bool:
    try:
        Path(tempfile.mkdtemp(dir=folder)).rmdir()
    except OSError:
        return True
    return False


@pytest.fixture
def read_only_folder(tmp_path: Path):
    """An existing folder in which nothing can be created.

    A folder without write permission, or, where that does not stop this
    process (root ignores mode bits), sysfs, where not even root creates files.
    """
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if _refuses_new_files(folder):
            yield folder
        elif _refuses_new_files(Path("/sys/kernel")):
            yield Path("/sys/kernel")
        else:
            pytest.skip("no folder here refuses new files to this user")
    finally:
        folder.chmod(0o755)


TINY_EXPORT = ("tiny", 16)  # model name, max batch size


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ``ddn-export`` of a tiny generator's generation graph (with its seed entries); tests only read it."""
    torch = pytest.importorskip("torch")
    from ddn.export.exporter import ModelExport
    from ddn.training.checkpoint import save_checkpoint
    from ddn.training.networks import SingleShotGenerator

    folder = tmp_path_factory.mktemp("tiny_export")
    torch.manual_seed(0)
    save_checkpoint(folder / "tiny.safetensors", SingleShotGenerator(image_size=8, image_channels=1, channels=16,
                                                                     blocks=1, k=8))
    name, max_batch = TINY_EXPORT
    ModelExport(folder / "tiny.safetensors", name, folder / "model_repository", max_batch=max_batch,
                instance_kind="auto").write_onnx(["generate"])
    return folder / "model_repository"
