"""TensorRT engines built by ``ddn-export --trt`` (needs a CUDA GPU and tensorrt; run with -m gpu)."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ddn.conditions import CONDITIONS
from ddn.deployment_targets import read_targets
from ddn.export.cli import main
from ddn.export.graphs import GenerateGraph
from ddn.export.onnx_export import export_onnx
from ddn.repository_contract import onnxruntime_session
from ddn.export.tensorrt_build import EngineRunner, build_engine, missing_requirements, verify_engine
from ddn.training.checkpoint import save_checkpoint
from ddn.training.networks import RecurrenceGenerator, SingleShotGenerator

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(bool(missing_requirements()), reason="needs " + " and ".join(missing_requirements())),
]


@pytest.fixture(scope="module")
def generate_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = SingleShotGenerator(image_size=8, image_channels=3, channels=16, k=8).eval()
    path = tmp_path_factory.mktemp("trt") / "model.onnx"
    export_onnx(GenerateGraph(model), path, max_batch=16)
    return model, path


@pytest.mark.parametrize("fp16", [False, True])
def test_engine_matches_onnx_runtime_over_the_batch_profile(generate_onnx, tmp_path, fp16):
    model, path = generate_onnx
    cache = tmp_path / "timing.cache"
    plan = build_engine(path, max_batch=16, fp16=fp16, timing_cache=cache)
    assert cache.stat().st_size > 0
    rng = np.random.default_rng(0)
    examples = [{"codes": rng.integers(0, 8, (b, model.num_layers)).astype(np.int32)} for b in (1, 7, 16)]
    report = verify_engine(plan, path, examples, fp16=fp16)
    assert report["batch_sizes"] == [1, 7, 16]
    assert report["max_abs_error"]["images"] <= (7 if fp16 else 1)


def test_engine_clamps_out_of_range_codes(generate_onnx):
    model, path = generate_onnx
    runner = EngineRunner(build_engine(path, max_batch=16))
    codes = np.random.default_rng(1).integers(0, 8, (3, model.num_layers)).astype(np.int32)
    codes[0, 0], codes[1, 1], codes[2, 2] = 8, -1, 10 ** 6
    out = runner({"codes": codes})
    want = onnxruntime_session(path).run(["images_float"], {"codes": np.clip(codes, 0, 7)})[0]
    np.testing.assert_allclose(out["images_float"], want, atol=1e-3)


def test_cli_trt_writes_verified_engine_entries(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "rec.safetensors"
    save_checkpoint(checkpoint, RecurrenceGenerator(image_size=8, image_channels=1, base=8, iterations=4, k=8))
    repository = tmp_path / "model_repository"
    result = CliRunner().invoke(main, [str(checkpoint), "--name", "rec", "--repository", str(repository),
                                       "--max-batch", "8", "--trt", "--fp16", "--timing-cache", str(tmp_path / "tc")])
    assert result.exit_code == 0, result.output
    gray_conditions = [f"rec_{name}" for name, spec in CONDITIONS.items() if spec.supports(1)]
    for entry in ("rec", "rec_encode", *gray_conditions):
        folder = repository / f"{entry}_trt"
        assert (folder / "1" / "model.plan").stat().st_size > 0
        config = (folder / "config.pbtxt").read_text()
        assert f'name: "{entry}_trt"' in config and 'platform: "tensorrt_plan"' in config
        assert "max_batch_size: 8" in config and "KIND_GPU" in config
        info = json.loads((folder / "ddn.json").read_text())
        assert info["backend"] == "tensorrt" and info["verification"]["fp16"] == (entry == "rec")
    # Generation by seed on the engine: the ensemble runs the seed step, then rec_trt.
    config = (repository / "rec_seeds_trt" / "config.pbtxt").read_text()
    assert 'platform: "ensemble"' in config and 'model_name: "rec_seed_codes"' in config
    assert 'model_name: "rec_trt"' in config
    # The engines and their ensemble are stated for the GPU server only.
    engines = {f"{entry}_trt" for entry in ("rec", "rec_encode", *gray_conditions)} | {"rec_seeds_trt"}
    targets = read_targets(repository)
    assert engines <= {s.entry for s in targets if s.target == "gpu"}
    assert not engines & {s.entry for s in targets if s.target == "cpu"}
