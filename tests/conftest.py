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



@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ``ddn-export`` of model_repository/README.md's example generator (its generation graph and seed
    entries, see ddn.export.repository_readme); tests only read it."""
    pytest.importorskip("torch")
    from ddn.export.repository_readme import export_example

    return export_example(tmp_path_factory.mktemp("tiny_export"))
