"""``ddn-export`` end to end: repository layout, Triton configs, python twin, --trt without a GPU, atomicity."""
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import ddn.export.exporter as exporter
from ddn.codes import SEED_RULE
from ddn.deployment_targets import TARGETS_FILE, read_targets
from ddn.export.cli import main
from ddn.export.exporter import ModelExport
from ddn.export.onnx_export import VerificationError
from ddn.export.tensorrt_build import missing_requirements
from ddn.export.triton_config import config_text, ensemble_config, graph_config
from ddn.repository_contract import TensorSpec
from ddn.training.checkpoint import save_checkpoint
from ddn.training.networks import SingleShotGenerator
from cli_helpers import one_line_error, usage_error

NO_TRT = bool(missing_requirements())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, SingleShotGenerator(image_size=8, image_channels=1, channels=16, blocks=1, k=8))
    return path


@pytest.fixture(scope="module")
def cli_export(checkpoint, tmp_path_factory):
    """One real ``ddn-export --graphs generate`` (with --trt where TensorRT cannot run here)."""
    repository = tmp_path_factory.mktemp("cli") / "model_repository"
    args = [str(checkpoint), "--name", "tiny", "--repository", str(repository), "--graphs", "generate", "--max-batch", "16"]
    result = CliRunner().invoke(main, args + (["--trt"] if NO_TRT else []))
    return result, repository


@pytest.fixture
def repository(cli_export, tmp_path) -> Path:
    """A private copy of the exported repository."""
    copy = tmp_path / "model_repository"
    shutil.copytree(cli_export[1], copy, symlinks=True)
    return copy


@pytest.fixture
def fast_export(cli_export, monkeypatch):
    """Make exports copy the already exported generate graph (verification still runs on it)."""
    cached = cli_export[1] / "tiny" / "1" / "model.onnx"
    monkeypatch.setattr(exporter, "export_onnx", lambda graph, path, max_batch, seed=0: shutil.copyfile(cached, path))


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> file digest or link target, for every file and link under ``folder``."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root, name)
            key = str(path.relative_to(folder))
            if path.is_symlink():
                out[key] = "-> " + os.readlink(path)
            elif path.is_file():
                out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def staging_leftovers(repository: Path) -> list[str]:
    return [p.name for p in repository.parent.iterdir() if ".ddn-export-" in p.name]


@pytest.mark.skipif(not NO_TRT, reason="TensorRT and a GPU are available: --trt builds instead of failing")
def test_trt_without_gpu_fails_in_one_line_after_writing_the_onnx_entries(cli_export):
    result, repository = cli_export
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if "--trt needs" in line]
    assert len(lines) == 1, result.output
    assert "a CUDA GPU" in lines[0] and "tensorrt" in lines[0] and "ONNX entries were written" in lines[0]
    model = onnx.load(str(repository / "tiny" / "1" / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert (repository / "tiny_python" / "1" / "model.onnx").resolve() == (repository / "tiny" / "1" / "model.onnx")
    assert not (repository / "tiny_trt").exists()
    assert "Reshape" in result.output and "MatMul" in result.output  # the operator report
    assert not staging_leftovers(repository)


def read_config_text(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def read_config(path: Path):
    return read_config_text(path.read_text())


def test_piped_progress_is_one_timestamped_line_per_entry(cli_export):
    """Off a terminal no bar is drawn (no carriage returns); each entry gets a timestamped stderr line."""
    result = cli_export[0]  # with --trt where TensorRT cannot run: the ONNX entries, then a one-line error
    assert "\r" not in result.output
    first = result.stderr.splitlines()[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ONNX 1/1: tiny", first), result.stderr


def test_configs_follow_the_triton_layout_contract(cli_export, checkpoint):
    repository = cli_export[1]
    config = read_config(repository / "tiny" / "config.pbtxt")
    twin = read_config(repository / "tiny_python" / "config.pbtxt")
    assert config.name == "tiny" and config.backend == "onnxruntime" and config.platform == "onnxruntime_onnx"
    assert twin.name == "" and twin.backend == "python"
    for c, kind in ((config, "KIND_AUTO"), (twin, "KIND_CPU")):  # ddn-export's default: --instance-kind auto
        assert c.max_batch_size == 16
        assert [(t.name, t.data_type, list(t.dims)) for t in c.input] == [("codes", 8, [4])]  # TYPE_INT32
        assert [(t.name, t.data_type, list(t.dims)) for t in c.output] == [
            ("images", 2, [8, 8, 1]), ("images_float", 11, [8, 8, 1])]  # TYPE_UINT8, TYPE_FP32
        assert list(c.dynamic_batching.preferred_batch_size) == [4, 16]
        assert c.dynamic_batching.max_queue_delay_microseconds == 500
        assert [(type(c.instance_group[0]).Kind.Name(g.kind), g.count) for g in c.instance_group] == [(kind, 1)]
        assert c.version_policy.latest.num_versions == 1
        (warmup,) = c.model_warmup
        assert warmup.batch_size == 1 and warmup.inputs["codes"].zero_data and list(warmup.inputs["codes"].dims) == [4]
        params = {k: v.string_value for k, v in c.parameters.items()}
        assert params["ddn_num_layers"] == "4" and params["ddn_branch_counts"] == "8,8,8,8"
        assert params["ddn_image_size"] == "8" and params["ddn_image_channels"] == "1"
        onnx_bytes = (repository / "tiny" / "1" / "model.onnx").read_bytes()
        assert params["ddn_onnx_sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    assert {k: v.string_value for k, v in twin.parameters.items()}["ort_intra_op_threads"] == "0"
    link = repository / "tiny_python" / "1" / "model.onnx"
    assert os.readlink(link) == os.path.join("..", "..", "tiny", "1", "model.onnx")
    template = Path(exporter.__file__).with_name("triton_python_model.py")
    assert (repository / "tiny_python" / "1" / "model.py").read_text() == template.read_text()

    info = json.loads((repository / "tiny" / "ddn.json").read_text())
    assert info["graph"] == "generate" and info["num_layers"] == 4 and info["branch_counts"] == [8] * 4
    assert info["image_shape"] == [8, 8, 1] and info["seed_rule"] == SEED_RULE and info["max_batch_size"] == 16
    assert info["checkpoint"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert info["inputs"] == [{"name": "codes", "dtype": "int32", "shape": [-1, 4]}]
    assert [o["name"] for o in info["outputs"]] == ["images", "images_float"]
    assert info["verification"]["max_abs_error"]["images"] <= 1


def test_every_config_is_the_text_format_of_a_model_config_message(cli_export):
    """Each exported config.pbtxt is a comment header plus exactly text_format's output for the parsed message."""
    repository = cli_export[1]
    entries = sorted(p for p in repository.iterdir() if (p / "config.pbtxt").is_file())
    assert [p.name for p in entries] == ["tiny", "tiny_python", "tiny_seed_codes", "tiny_seeds"]
    for entry in entries:
        text = (entry / "config.pbtxt").read_text()
        header = [line.removeprefix("# ") for line in text.splitlines() if line.startswith("#")]
        assert header and text.startswith("".join(f"# {line}\n" for line in header)), entry.name
        config = read_config(entry / "config.pbtxt")
        assert config_text(config, "\n".join(header)) == text, entry.name
        assert read_config_text(config_text(config, "\n".join(header))) == config, entry.name


def test_configs_round_trip_through_the_schema():
    """parse(write(config)) == config for a graph entry of every backend and kind, and an ensemble."""
    spec = TensorSpec
    inputs = [spec("codes", np.dtype(np.int32), (3,))]
    outputs = [spec("images", np.dtype(np.uint8), (8, 8, 3)), spec("images_float", np.dtype(np.float32), (8, 8, 3))]
    parameters = {"ddn_graph": "generate", "quote\"and\\backslash": "line\nbreak, ünïcode"}
    configs = [graph_config(name=name, backend=backend, max_batch=max_batch, inputs=inputs, outputs=outputs,
                            parameters=parameters, instance_kind=kind)
               for name, backend, max_batch, kind in [("m", "onnxruntime", 64, "KIND_GPU"), (None, "python", 1, "KIND_CPU"),
                                                      ("m_trt", "tensorrt", 5, "KIND_AUTO")]]
    configs.append(ensemble_config(name="m_seeds", max_batch=64, inputs=[spec("seeds", np.dtype(np.int64), (1,))],
                                   outputs=outputs, parameters=parameters,
                                   steps=[("m_seed_codes", {"seeds": "seeds"}, {"codes": "codes"}),
                                          ("m", {"codes": "codes"}, {"images": "images"})]))
    for config in configs:
        assert read_config_text(config_text(config, "a comment\nof two lines")) == config
    assert [type(c.instance_group[0]).Kind.Name(c.instance_group[0].kind) for c in configs[:3]] == [
        "KIND_GPU", "KIND_CPU", "KIND_AUTO"]
    assert list(configs[0].dynamic_batching.preferred_batch_size) == [16, 64] and configs[1].name == ""


class FakeTensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class FakeResponse:
    def __init__(self, output_tensors, error=None):
        self.tensors = {t.name: t.array for t in output_tensors}
        self.error = error


class FakeRequest:
    def __init__(self, requested=(), **inputs):
        self.inputs, self.requested = inputs, list(requested)

    def requested_output_names(self):
        return self.requested


def test_python_twin_model_runs_dynamic_batches_through_onnx_runtime(cli_export, checkpoint, monkeypatch):
    """The twin's model.py with a minimal stand-in for triton_python_backend_utils (the real server is serving's test)."""
    json_format = pytest.importorskip("google.protobuf.json_format")
    repository = cli_export[1]
    fake = types.ModuleType("triton_python_backend_utils")
    fake.Tensor, fake.InferenceResponse, fake.TritonError = FakeTensor, FakeResponse, str
    fake.get_input_tensor_by_name = lambda request, name: FakeTensor(name, request.inputs[name])
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    spec = importlib.util.spec_from_file_location("twin_model", repository / "tiny_python" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    config = json_format.MessageToJson(read_config(repository / "tiny_python" / "config.pbtxt"),
                                       preserving_proto_field_name=True)
    model = module.TritonPythonModel()
    model.initialize({"model_config": config, "model_repository": str(repository / "tiny_python"), "model_version": "1",
                      "model_name": "tiny_python"})
    model.guard.stop = lambda message: None  # a stall of this test process must not kill the shell that ran pytest
    codes = np.random.default_rng(0).integers(0, 8, (5, 4)).astype(np.int32)
    first, second = model.execute([FakeRequest(codes=codes[:2]), FakeRequest(["images"], codes=codes[2:])])
    from ddn.training.checkpoint import load_generator
    want = load_generator(checkpoint).decode(codes).clamp(-1, 1).permute(0, 2, 3, 1).numpy()
    assert first.error is None and set(first.tensors) == {"images", "images_float"}
    assert set(second.tensors) == {"images"}
    np.testing.assert_allclose(first.tensors["images_float"], want[:2], atol=1e-5)
    pixels = np.concatenate([first.tensors["images"], second.tensors["images"]])
    assert np.abs(pixels.astype(int) - np.rint((want + 1) * 127.5).astype(int)).max() <= 1
    (broken,) = model.execute([FakeRequest(codes=codes.astype(np.float32))])
    assert broken.error and not broken.tensors
    model.finalize()


def test_interrupted_export_leaves_no_half_written_model(repository, checkpoint, fast_export, monkeypatch):
    before = snapshot(repository)
    calls = []

    def export_then_interrupt(graph, path, max_batch, seed=0):
        calls.append(graph.kind)
        if len(calls) == 2:  # midway: the first graph is exported, verified and staged
            raise KeyboardInterrupt
        shutil.copyfile(repository / "tiny" / "1" / "model.onnx", path)

    monkeypatch.setattr(exporter, "export_onnx", export_then_interrupt)
    for version in (1, 2):  # replacing the existing version, and adding a new one
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            ModelExport(checkpoint, "tiny", repository, version=version).write_onnx(["generate", "encode"])
        assert snapshot(repository) == before
    assert not staging_leftovers(repository)


def test_interrupted_verification_keeps_the_previous_version(repository, checkpoint, fast_export, monkeypatch):
    before = snapshot(repository)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(exporter, "verify_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ModelExport(checkpoint, "tiny", repository).write_onnx(["generate"])
    assert snapshot(repository) == before and not staging_leftovers(repository)


def test_failed_verification_exits_nonzero_and_writes_nothing(repository, checkpoint, fast_export, monkeypatch):
    before = snapshot(repository)

    def mismatch(*args, **kwargs):
        raise VerificationError("output 'images' differs by 9 (limit 1)")

    monkeypatch.setattr(exporter, "verify_onnx", mismatch)
    result = CliRunner().invoke(main, [str(checkpoint), "--name", "tiny", "--repository", str(repository), "--model-version", "3"])
    assert result.exit_code == 1 and "verification failed, nothing written" in result.output
    assert snapshot(repository) == before and not staging_leftovers(repository)


def test_new_version_keeps_the_others_and_replacing_one_is_complete(repository, checkpoint, fast_export):
    v1 = {k: v for k, v in snapshot(repository).items() if "/1" in k}
    ModelExport(checkpoint, "tiny", repository, version=2, max_batch=8).write_onnx(["generate"])
    after = snapshot(repository)
    assert {k: v for k, v in after.items() if "/1" in k} == v1  # version 1 untouched
    for entry in ("tiny", "tiny_python"):
        assert sorted(p.name for p in (repository / entry).iterdir()) == ["1", "2", "config.pbtxt", "ddn.json"]
    assert (repository / "tiny_python" / "2" / "model.onnx").resolve() == repository / "tiny" / "2" / "model.onnx"
    assert "max_batch_size: 8" in (repository / "tiny" / "config.pbtxt").read_text()

    ModelExport(checkpoint, "tiny", repository, version=1).write_onnx(["generate"])
    assert (repository / "tiny" / "2" / "model.onnx").is_file() and (repository / "tiny" / "1" / "model.onnx").is_file()
    assert json.loads((repository / "tiny" / "ddn.json").read_text())["version"] == 1
    assert not staging_leftovers(repository)


@pytest.mark.parametrize("extra, exit_code, message", [
    (["--graphs", "generate,upscale"], 2, "Error: Invalid value for '--graphs': unknown graph 'upscale'; choose from generate, "),
    (["--graphs", "colorize"], 1, "Error: graph 'colorize' needs an RGB model; this one has 1 channel(s)"),
    (["--superres-factor", "3"], 2, "Error: Invalid value for '--superres-factor': 3 is not a power of two"),
    (["--fp16"], 2, "Error: --fp16 applies to TensorRT engines; add --trt"),
])
def test_bad_arguments_are_refused_before_anything_is_written(checkpoint, tmp_path, extra, exit_code, message):
    """Bad command lines are usage errors (exit 2); what only the checkpoint can tell is a runtime error (exit 1)."""
    result = CliRunner().invoke(main, [str(checkpoint), "--name", "tiny", "--repository", str(tmp_path / "repo"), *extra])
    line = usage_error(result) if exit_code == 2 else one_line_error(result)
    assert line.startswith(message), line
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_missing_checkpoint_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(main, [str(tmp_path / "nope.safetensors"), "--name", "x", "--repository", str(tmp_path)])
    assert result.exit_code == 1 and "checkpoint not found" in result.output and result.output.count("\n") == 1



@pytest.mark.parametrize("name, message", [
    ("tiny_python", "tiny_python belongs to model 'tiny'"),  # tiny's CPU twin
    ("tiny_encode", "collides with model 'tiny' in"),  # would be tiny's encoding graph
    ("tiny_trt", "collides with model 'tiny' in"),  # would be tiny's TensorRT engine
])
def test_a_name_that_collides_with_another_models_entries_is_refused(repository, checkpoint, fast_export,
                                                                   name, message):
    before = snapshot(repository)
    line = one_line_error(CliRunner().invoke(main, [str(checkpoint), "--name", name, "--repository",
                                                    str(repository), "--graphs", "generate"]))
    assert message in line
    assert snapshot(repository) == before and not staging_leftovers(repository)


def test_exports_never_replace_an_entry_of_another_model_or_a_foreign_folder(repository, checkpoint, fast_export):
    ModelExport(checkpoint, "other", repository).write_onnx(["generate"])
    (repository / "mine" / "1").mkdir(parents=True)  # a hand-made Triton model, no ddn.json
    (repository / "mine" / "config.pbtxt").write_text('backend: "python"\n')
    before = snapshot(repository)
    line = one_line_error(CliRunner().invoke(main, [str(checkpoint), "--name", "mine", "--repository",
                                                    str(repository), "--graphs", "generate"]))
    assert "mine exists and is not a ddn-export entry" in line
    # An existing model's own later export (other, then tiny again) is still allowed.
    ModelExport(checkpoint, "tiny", repository, version=2).write_onnx(["generate"])
    assert {k: v for k, v in snapshot(repository).items() if k.startswith(("other", "mine"))} == {
        k: v for k, v in before.items() if k.startswith(("other", "mine"))}


def test_every_export_states_its_targets_and_keeps_the_other_models_lines(repository, checkpoint, fast_export):
    """targets.txt: the GPU serves production and seed entries, the CPU the twins under the same names."""
    def lines() -> list[tuple[str, str, str]]:
        return sorted((s.target, s.name, s.entry) for s in read_targets(repository))

    tiny = [("cpu", "tiny", "tiny_python"), ("gpu", "tiny", "tiny")] + [
        (target, entry, entry) for target in ("cpu", "gpu") for entry in ("tiny_seed_codes", "tiny_seeds")]
    assert lines() == sorted(tiny)
    ModelExport(checkpoint, "other", repository).write_onnx(["generate"])
    other = [(target, name.replace("tiny", "other"), entry.replace("tiny", "other")) for target, name, entry in tiny]
    assert lines() == sorted(tiny + other)
    ModelExport(checkpoint, "tiny", repository, version=2).write_onnx(["generate"])
    assert lines() == sorted(tiny + other)
    assert [p.name for p in repository.iterdir() if p.is_file()] == [TARGETS_FILE]  # no temporary file left


def test_the_statements_file_name_is_no_model_name(checkpoint, tmp_path):
    line = one_line_error(CliRunner().invoke(main, [str(checkpoint), "--name", TARGETS_FILE, "--repository",
                                                    str(tmp_path / "repo")]))
    assert line == f"Error: model name {TARGETS_FILE!r} is the repository's {TARGETS_FILE}; choose another --name"


def test_a_300_character_name_is_one_line(checkpoint, tmp_path):
    line = one_line_error(CliRunner().invoke(main, [str(checkpoint), "--name", "x" * 300, "--repository",
                                                    str(tmp_path / "repo")]))
    assert "model name is 300 characters long; at most 128" in line
    assert not (tmp_path / "repo").exists()


def test_an_unwritable_repository_is_one_line_and_nothing_is_written(checkpoint, read_only_folder, fast_export):
    def listing() -> list[str]:
        return sorted(p.name for p in (*read_only_folder.iterdir(), *read_only_folder.parent.iterdir()))

    before = listing()
    for repository in (read_only_folder / "model_repository", read_only_folder):  # parent read-only, or itself
        line = one_line_error(CliRunner().invoke(main, [str(checkpoint), "--name", "tiny", "--repository",
                                                        str(repository), "--graphs", "generate"]))
        assert line.startswith(f"Error: cannot write into {repository}: "), line
        assert "Permission denied" in line or "Operation not permitted" in line, line
        assert listing() == before


KILLED_EXPORT = """
import sys, time
from pathlib import Path
from ddn.export.repository import staging_folder

with staging_folder(Path(sys.argv[1])) as folder:
    (folder / "half-written").write_text("x")
    print(folder, flush=True)
    time.sleep(120)
"""


def test_the_next_export_removes_a_killed_exports_staging_folder(repository, checkpoint, fast_export):
    exports = [subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, str(repository)], stdout=subprocess.PIPE,
                                text=True) for _ in range(2)]
    killed, live = exports
    try:
        killed_folder, live_folder = (Path(p.stdout.readline().strip()) for p in exports)
        killed.kill()
        killed.wait()
        assert killed_folder.is_dir() and live_folder.is_dir()
        ModelExport(checkpoint, "tiny", repository).write_onnx(["generate"])
        assert not killed_folder.exists() and live_folder.is_dir()
    finally:
        for process in exports:
            process.kill()
            process.wait()
