"""Every named preset, at a tiny size: trains, exports (verified against ONNX Runtime) and serves through Triton."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="needs the nvidia-pytriton wheel (pip install 'ddn-serve[serving]')")

from ddn.export.exporter import ModelExport  # noqa: E402
from ddn.export.graphs import float_to_pixels, model_to_float  # noqa: E402
from ddn.serving.client import DDNClient  # noqa: E402
from ddn.serving.onnx_model import OnnxModel  # noqa: E402
from ddn.serving.repository_view import cpu_repository_view  # noqa: E402
from ddn.serving.triton_server import TritonServer  # noqa: E402
from ddn.training.checkpoint import load_generator  # noqa: E402
from ddn.training.presets import PRESETS, preset_config  # noqa: E402
from ddn.training.train_loop import TrainConfig, train  # noqa: E402
from ddn.training.train_state import LAST  # noqa: E402
from train_helpers import tiny  # noqa: E402

# Each preset's own layout, shrunk (fewer channels, blocks, branches, repeats) to run in seconds on 8x8 digits.
SHRINK = {"cpu": dict(channels=16, k=8, max_blocks=2), "cifar10": dict(channels=16, k=8, max_blocks=2),
          "mnist-recurrence": dict(channels=8, k=8, iterations=2), "tiny": {}}
SEEDS = [0, 1, 2, 3, 4]


def test_every_preset_is_covered_and_keeps_its_layout():
    assert set(SHRINK) == set(PRESETS)
    assert preset_config("cifar10", 32, 3)["blocks"] == [1, 2, 4, 8, 16, 32]  # 63 DDLs, as the paper's model
    recurrence = preset_config("mnist-recurrence", 32, 1)
    assert (recurrence["base"], recurrence["k"], recurrence["iterations"], recurrence["residual"]) == (32, 64, 10, False)
    with pytest.raises(ValueError, match="unknown preset 'gan'"):
        preset_config("gan", 32, 1)
    with pytest.raises(ValueError, match="max_blocks applies to single-shot presets only"):
        preset_config("mnist-recurrence", 32, 1, max_blocks=2)
    with pytest.raises(ValueError, match="iterations applies to recurrence presets only"):
        preset_config("cpu", 32, 1, iterations=4)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each preset trained for 3 steps and exported (generation graph) into one repository."""
    folder = tmp_path_factory.mktemp("presets")
    repository = folder / "model_repository"
    for preset, shrink in SHRINK.items():
        config: TrainConfig = tiny(preset=preset, steps=3, **shrink)
        result = train(config, folder / preset, progress=False)
        assert result.model.config()["kind"] == preset_config(preset, 8, 1)["kind"]
        ModelExport(folder / preset / LAST, preset.replace("-", "_"), repository, max_batch=8).write_onnx(["generate"])
    return repository


@pytest.fixture(scope="module")
def server(repository: Path):
    with cpu_repository_view(repository) as view, TritonServer(view) as running:
        yield running


@pytest.mark.parametrize("preset", sorted(SHRINK))
def test_preset_serves_what_pytorch_computes(preset: str, repository: Path, server: TritonServer):
    name = preset.replace("-", "_")
    model = load_generator(repository.parent / preset / LAST)
    expected = float_to_pixels(model_to_float(model.sample(seed=SEEDS))).numpy()
    local = OnnxModel.from_repository(repository, name).generate(seeds=SEEDS)
    with DDNClient(server.grpc_url, model=name) as client:
        served = client.generate(seeds=SEEDS)
        assert client.layout.branch_counts == tuple(model.branch_counts)
    np.testing.assert_array_equal(served, local)  # same file, same runtime: the same bytes
    assert np.abs(served.astype(int) - expected).max() <= 1  # ONNX Runtime vs PyTorch: within one level
