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


@pytest.fixture(scope="session")
def tiny_generation_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded tiny generator's generation graph alone, exported as ``tiny`` (few entries: its server loads fast);
    one export for the session (each export is seconds of torch.export), so tests only read it."""
    import torch

    from ddn.export.exporter import ModelExport
    from ddn.training.checkpoint import save_checkpoint
    from ddn.training.networks import SingleShotGenerator

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_generation")
    checkpoint = folder / "tiny.safetensors"
    save_checkpoint(checkpoint, SingleShotGenerator(image_size=8, channels=16, k=8))
    ModelExport(checkpoint, "tiny", folder / "repository", max_batch=4).write_onnx(["generate"])
    return folder / "repository"


@pytest.fixture(scope="session")
def rgb_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded tiny RGB generator (one block per scale: L = 4) exported as ``rgb`` with every graph kind (generation,
    encoding and each condition; super-resolution by 2, max batch 4), its checkpoint beside the repository as
    ``rgb.safetensors``; one export for the session (six graphs of torch.export), so tests only read it."""
    import torch

    from ddn.export.exporter import ModelExport
    from ddn.repository_contract import GRAPH_KINDS
    from ddn.training.checkpoint import save_checkpoint
    from ddn.training.networks import SingleShotGenerator

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("rgb")
    checkpoint = folder / "rgb.safetensors"
    save_checkpoint(checkpoint, SingleShotGenerator(image_size=8, image_channels=3, channels=16, blocks=1, k=8))
    ModelExport(checkpoint, "rgb", folder / "model_repository", max_batch=4, superres_factor=2).write_onnx(GRAPH_KINDS)
    return folder / "model_repository"


@pytest.fixture(scope="module")
def server(repository: Path):
    """A real Triton server on the CPU view of the module's ``repository`` fixture, as ddn-serve runs it."""
    from ddn.serving.repository_view import cpu_repository_view
    from ddn.serving.triton_server import TritonServer

    with cpu_repository_view(repository) as view, TritonServer(view) as running:
        yield running


@pytest.fixture(scope="module")
def local(request: pytest.FixtureRequest, repository: Path):
    """The module's model (its NAME) run in this process with ONNX Runtime: the reference served bytes must equal."""
    from ddn.serving.onnx_model import OnnxModel

    return OnnxModel.from_repository(repository, request.module.NAME)
