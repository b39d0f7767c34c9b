"""Every condition through the served graphs: a real Triton server and ONNX Runtime in this process agree byte for byte.

One tiny RGB generator is exported with its generation graph and every
condition of the registry (conftest's ``rgb_repository``); one server runs its
CPU view. ``ddn-generate --condition`` writes the same PNGs through ``--url``
and ``--repository`` (and without torch), and refuses bad condition inputs
with the same one-line message on both paths.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("pytriton", reason="needs the nvidia-pytriton wheel (pip install 'ddn-serve[serving]')")
pytest.importorskip("tritonclient.grpc")

from ddn.conditions import CONDITIONS, ConditionError  # noqa: E402
from ddn.export.graphs import build_graphs  # noqa: E402
from ddn.images import load_png, save_png  # noqa: E402
from ddn.serving.client import DDNClient, ServingError  # noqa: E402
from ddn.serving.generate_cli import main as generate_main  # noqa: E402
from ddn.serving.onnx_model import OnnxModel  # noqa: E402
from ddn.serving.triton_server import TritonServer  # noqa: E402
from ddn.training.checkpoint import load_generator  # noqa: E402
from no_torch import module_main_without_torch  # noqa: E402

NAME = "rgb"
MAX_BATCH = 4
FACTOR = 2
SAMPLES = 5  # more than MAX_BATCH: requests are split


@pytest.fixture(scope="module")
def repository(rgb_repository: Path) -> Path:
    return rgb_repository  # NAME, with MAX_BATCH and FACTOR as above


@pytest.fixture(scope="module")
def client(server: TritonServer):
    with DDNClient(server.grpc_url, model=NAME, concurrency=2) as c:
        yield c


@pytest.fixture(scope="module")
def inputs(repository: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per condition, its batched inputs: images the model makes as the condition sees them (export's examples)."""
    graphs = build_graphs(load_generator(repository.parent / "rgb.safetensors"), superres_factor=FACTOR)
    rng = np.random.default_rng(0)
    return {name: dict(zip([i.name for i in spec.inputs], graphs[name].example_inputs(SAMPLES, rng)))
            for name, spec in CONDITIONS.items()}


def input_files(inputs: dict[str, np.ndarray], condition: str, folder: Path) -> list[str]:
    """The condition's inputs as files: --input a folder of one PNG per sample, --mask the first sample's mask."""
    args = []
    for item in CONDITIONS[condition].inputs:
        if item.option == "input":
            for i, pixels in enumerate(inputs[item.name]):
                save_png(folder / "in" / f"sample{i}.png", pixels)
            args += ["--input", str(folder / "in")]
        else:
            args += [f"--{item.option}", str(save_png(folder / f"{item.option}.png", inputs[item.name][0] * 255))]
    return args


def test_the_registry_is_what_the_server_serves(client: DDNClient, local: OnnxModel) -> None:
    for condition, spec in CONDITIONS.items():
        layout = client.condition_layout(condition)
        assert layout == local.condition_layout(condition) and layout.graph == condition
        assert client.model_info(client.graph(condition)).inputs == spec.input_specs(layout)
    assert client.condition_layout("superres").superres_factor == FACTOR


@pytest.mark.parametrize("condition", list(CONDITIONS))
def test_client_and_onnxruntime_give_the_same_results(client: DDNClient, local: OnnxModel, inputs,
                                                      condition: str) -> None:
    served = client.conditional(condition, **inputs[condition])
    here = local.conditional(condition, **inputs[condition])
    assert sorted(served) == sorted(here) == ["codes", "images"]
    assert served["images"].shape == (SAMPLES, 8, 8, 3) and served["codes"].shape == (SAMPLES, local.layout.num_layers)
    for name in here:
        np.testing.assert_array_equal(served[name], here[name])


@pytest.mark.parametrize("condition", list(CONDITIONS))
def test_ddn_generate_condition_writes_identical_pngs_through_url_and_repository(
        server: TritonServer, repository: Path, local: OnnxModel, inputs, tmp_path: Path, condition: str) -> None:
    files = input_files(inputs[condition], condition, tmp_path)
    common = ["--model", NAME, "--condition", condition, *files, "--batch", "2", "--no-progress"]
    runs = {"local": ["--repository", str(repository)], "served": ["--url", server.grpc_url, "--concurrency", "2"]}
    for where, source in runs.items():
        result = CliRunner().invoke(generate_main, [*source, *common, "--out", str(tmp_path / where)])
        assert result.exit_code == 0, result.output
        assert f"{SAMPLES} written, 0 already there" in result.output
    names = [f"sample{i}.png" for i in range(SAMPLES)]
    for where in runs:
        assert sorted(p.name for p in (tmp_path / where).iterdir()) == names
    for name in names:
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "served" / name).read_bytes(), name
    # The PNGs are the graph's results for the inputs as read from the files (the mask file is the first mask).
    batch = dict(inputs[condition])
    if "mask" in batch:
        batch["mask"] = np.repeat(batch["mask"][:1], SAMPLES, axis=0)
    want = local.conditional(condition, **batch)["images"]
    np.testing.assert_array_equal(np.stack([load_png(tmp_path / "served" / name) for name in names]), want)
    rerun = CliRunner().invoke(generate_main, [*runs["served"], *common, "--out", str(tmp_path / "served")])
    assert rerun.exit_code == 0 and f"0 written, {SAMPLES} already there" in rerun.output


def test_ddn_generate_condition_runs_without_torch(repository: Path, inputs, tmp_path: Path) -> None:
    files = input_files(inputs["inpaint"], "inpaint", tmp_path)
    args = ["--repository", str(repository), "--model", NAME, "--condition", "inpaint", *files, "--no-progress"]
    result = module_main_without_torch("ddn.serving.generate_cli", [*args, "--out", str(tmp_path / "no_torch")])
    assert result.returncode == 0, result.stderr
    with_torch = CliRunner().invoke(generate_main, [*args, "--out", str(tmp_path / "with_torch")])
    assert with_torch.exit_code == 0, with_torch.output
    for i in range(SAMPLES):
        name = f"sample{i}.png"
        assert (tmp_path / "no_torch" / name).read_bytes() == (tmp_path / "with_torch" / name).read_bytes()


@pytest.mark.parametrize("condition, args, exit_code, message", [
    ("superres", ["--input", "full.png"], 1,
     "Error: superres: --input full.png is 8x8; it must be 4x4 (the model's 8x8 images / superres factor 2)"),
    ("inpaint", ["--input", "full.png"], 2, "Error: --condition inpaint needs --mask (the known pixels"),
    ("inpaint", ["--input", "full.png", "--mask", "gray_mask.png"], 1,
     "Error: inpaint: --mask gray_mask.png must be black (fill in) and white (keep) only; found gray level 128"),
    ("inpaint", ["--input", "full.png", "--mask", "full.png"], 1,
     "Error: inpaint: --mask full.png has 3 channel(s); it must have 1 (grayscale)"),
    ("inpaint", ["--input", "gray.png", "--mask", "mask.png"], 1,
     "Error: inpaint: --input gray.png has 1 channel(s); it must have 3 (RGB)"),
    ("colorize", ["--input", "full.png"], 1,
     "Error: colorize: --input full.png has 3 channel(s); it must have 1 (grayscale)"),
    ("inpaint", ["--input", "small.png", "--mask", "mask.png"], 1,
     "Error: inpaint: --input small.png is 4x4; it must be 8x8 (the model's image size)"),
    ("superres", ["--input", "full.png", "--mask", "mask.png"], 2,
     "Error: --mask does not apply to --condition superres"),
    ("superres", ["--input", "full.png", "--n", "3"], 2, "Error: --n does not apply to --condition"),
    ("superres", ["--input", "empty"], 1, "Error: no image files (.png"),
    ("superres", ["--input", "missing.png"], 1, "Error: image not found: missing.png"),
])
def test_bad_condition_inputs_get_the_same_one_line_error_on_both_paths(
        server: TritonServer, repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        condition: str, args: list[str], exit_code: int, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    save_png("full.png", np.full((8, 8, 3), 100, np.uint8))
    save_png("small.png", np.full((4, 4, 3), 100, np.uint8))
    save_png("gray.png", np.full((8, 8, 1), 100, np.uint8))
    save_png("mask.png", np.full((8, 8, 1), 255, np.uint8))
    save_png("gray_mask.png", np.full((8, 8, 1), 128, np.uint8))
    Path("empty").mkdir()
    lines = []
    for source in (["--repository", str(repository)], ["--url", server.grpc_url]):
        result = CliRunner().invoke(generate_main, [*source, "--model", NAME, "--condition", condition, *args,
                                                    "--out", "out", "--no-progress"])
        assert result.exit_code == exit_code, result.output
        assert "Traceback" not in result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and errors[0].startswith(message), result.output
        if exit_code == 1:
            assert result.output.strip() == errors[0]  # one line, no usage text
        lines.append(errors[0])
    assert lines[0] == lines[1]
    assert not any(Path("out").glob("*.png"))


@pytest.mark.parametrize("condition, change, message", [
    ("inpaint", lambda x: {**x, "mask": x["mask"] * 255}, "inpaint: input 'mask' must hold only 0 (fill in) and 1 "
                                                          "(keep), found 255"),
    ("colorize", lambda x: {"gray": np.repeat(x["gray"], 3, axis=3)},
     "colorize: input 'gray' [B, H, W, C] has 3 channel(s); it must have 1 (grayscale)"),
    ("superres", lambda x: {"low_res": x["low_res"].astype(np.float32)}, "superres: input 'low_res' must be uint8, "
                                                                         "got float32"),
    ("superres", lambda x: {"low": x["low_res"]}, "superres takes inputs low_res; got low"),
])
def test_bad_arrays_get_the_same_message_from_client_and_onnxruntime(client: DDNClient, local: OnnxModel, inputs,
                                                                     condition: str, change, message: str) -> None:
    bad = change(inputs[condition])
    with pytest.raises(ServingError) as served:
        client.conditional(condition, **bad)
    with pytest.raises(ConditionError) as here:
        local.conditional(condition, **bad)
    assert str(served.value) == str(here.value) == message
