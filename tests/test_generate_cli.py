"""ddn-generate without a server (and the research conditional command): constant memory for any N, one-line errors."""
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ddn.export.exporter import ModelExport
from ddn.images import load_png, make_grid, save_png
from ddn.serving.generate_cli import main as ddn_generate
from ddn.serving.onnx_model import OnnxModel
from ddn.training.checkpoint import save_checkpoint
from ddn.training.networks import SingleShotGenerator
from ddn.training.zscg import BATCH, generate_conditional
from ddn.training.zscg_cli import conditional
from cli_helpers import one_line_error, usage_error

NAME = "tiny"
# A run needs about 370 MB of address space (670 MB with torch, for conditional generation) on 2 cores; the seed
# list of 10^9 images alone took tens of GB, one conditional batch of 10^7 samples 2.5 GB before any work.
MEMORY_LIMIT = 2 << 30


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny checkpoint and its exported generation graph."""
    folder = tmp_path_factory.mktemp("generate")
    torch.manual_seed(0)
    checkpoint = folder / "tiny.safetensors"
    save_checkpoint(checkpoint, SingleShotGenerator(image_size=8, channels=16, blocks=1, k=8))
    ModelExport(checkpoint, NAME, folder / "model_repository", max_batch=16).write_onnx(["generate", "encode"])
    return checkpoint, folder / "model_repository"


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_until_written(args: list[str], out: Path, count: int, module: str = "ddn.serving.generate_cli") -> None:
    """Run ddn-generate (or another ``module``'s command) under MEMORY_LIMIT until ``count`` images are in
    ``out``, then stop it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    process = subprocess.Popen([sys.executable, "-m", module, *args, "--out", str(out)], stderr=subprocess.PIPE,
                               text=True, env=env, preexec_fn=limit_memory)
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if out.is_dir() and sum(1 for p in out.iterdir() if p.suffix == ".png") >= count:
                break
            time.sleep(0.2)
        assert process.poll() is None, f"ddn-generate exited with {process.returncode}: {process.stderr.read()}"
    finally:
        process.kill()
        process.wait()


def test_a_billion_seeds_stream_in_bounded_memory(exported, tmp_path):
    _, repository = exported
    out = tmp_path / "samples"
    run_until_written(["--repository", str(repository), "--model", NAME, "--n", "1000000000", "--batch", "16",
                       "--no-progress"], out, 200)
    local = OnnxModel.from_repository(repository, NAME)
    want = local.generate(seeds=range(100))
    np.testing.assert_array_equal(np.stack([load_png(out / f"{seed:06d}.png") for seed in range(100)]), want)


def test_ten_million_conditional_samples_stream_in_bounded_memory(exported, tmp_path):
    checkpoint, _ = exported
    save_png(tmp_path / "low.png", np.random.default_rng(0).integers(0, 256, (4, 4, 1), dtype=np.uint8))
    out = tmp_path / "zscg"
    run_until_written(["--checkpoint", str(checkpoint), "--condition", "superres", "--input",
                       str(tmp_path / "low.png"), "--n", "10000000", "--seed", "5"], out, 3 * BATCH,
                      module="ddn.training.zscg_cli")
    # The first batch draws as a run of exactly one batch does.
    generate_conditional(checkpoint, "superres", {"input": tmp_path / "low.png"}, n=BATCH, out_dir=tmp_path / "one",
                         seed=5)
    for i in range(BATCH):
        assert load_png(out / f"result_{i:03d}.png").tobytes() == load_png(tmp_path / "one" / f"result_{i:03d}.png").tobytes()
    assert (out / "grid.png").is_file()  # written once its first results were in


def test_codes_file_holds_every_seed_and_its_codes(exported, tmp_path):
    _, repository = exported
    result = CliRunner().invoke(ddn_generate, ["--repository", str(repository), "--model", NAME, "--n", "37",
                                               "--seed", "100", "--batch", "4", "--concurrency", "2", "--out",
                                               str(tmp_path / "out"), "--codes", str(tmp_path / "codes.npz"),
                                               "--grid", str(tmp_path / "grid.png"), "--no-progress"])
    assert result.exit_code == 0, result.output
    local = OnnxModel.from_repository(repository, NAME)
    # 37 tiles of 8x8 pixels shown 4x (32 px) in 7 columns and 6 rows, 1 px apart.
    np.testing.assert_array_equal(load_png(tmp_path / "grid.png"),
                                  make_grid(local.generate(seeds=range(100, 137)), scale=4))
    assert load_png(tmp_path / "grid.png").shape[:2] == (6 * 33 + 1, 7 * 33 + 1)
    with np.load(tmp_path / "codes.npz") as saved:
        np.testing.assert_array_equal(saved["seeds"], np.arange(100, 137))
        np.testing.assert_array_equal(saved["codes"], local.codes_for_seeds(range(100, 137)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.npz", "grid.png", "out"]  # no temporary file left


def generate(*args) -> str:
    return CliRunner().invoke(ddn_generate, [str(a) for a in args] + ["--no-progress"])


def test_a_file_that_is_not_onnx(exported, tmp_path):
    _, repository = exported
    copy = tmp_path / "repository"
    shutil.copytree(repository, copy)
    (copy / NAME / "1" / "model.onnx").write_bytes(b"not a protobuf at all")
    line = one_line_error(generate("--onnx", copy / NAME / "1" / "model.onnx", "--out", tmp_path / "out"))
    assert f"cannot load {copy / NAME / '1' / 'model.onnx'} as an ONNX model" in line


@pytest.mark.parametrize("problem", ["out under a file", "grid is the output folder", "codes read-only",
                                     "grid read-only"])
def test_unwritable_outputs(exported, tmp_path, read_only_folder, problem):
    _, repository = exported
    (tmp_path / "file").write_text("x")
    out = tmp_path / "out"
    args, where, why = {
        "out under a file": (["--out", tmp_path / "file" / "sub"], tmp_path / "file" / "sub", "Not a directory"),
        "grid is the output folder": (["--out", out, "--grid", out], out, "Is a directory"),
        "codes read-only": (["--out", out, "--codes", read_only_folder / "codes.npz"], read_only_folder,
                            "ermi"),  # Permission denied, or Operation not permitted
        "grid read-only": (["--out", out, "--grid", read_only_folder / "grid.png"], read_only_folder, "ermi"),
    }[problem]
    line = one_line_error(generate("--repository", repository, "--model", NAME, "--n", 3, *args))
    assert line.startswith(f"Error: cannot write {where}") and why in line, line


@pytest.mark.parametrize("change, message", [
    (lambda text: text[:40], "cannot read {path}: "),
    (lambda text: text.replace('"max_batch_size": 16', '"max_batch_size": 0'),
     "{path} is incomplete or malformed: RepositoryError: max_batch_size must be >= 1, got 0"),
    (lambda text: text.replace('"num_layers": 4', '"num_layers": -4'), "{path} is incomplete or malformed: "),
])
def test_a_corrupt_description_names_its_path(exported, tmp_path, change, message):
    _, repository = exported
    copy = tmp_path / "repository"
    shutil.copytree(repository, copy)
    path = copy / NAME / "ddn.json"
    path.write_text(change(path.read_text()))
    line = one_line_error(generate("--repository", copy, "--model", NAME, "--out", tmp_path / "out"))
    assert message.format(path=path) in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed, message", [
    ("100000000000000000000000", "100000000000000000000000 is not in the range 0<=x<=18446744073709551615"),
    ("1e23", "'1e23' is not a valid integer"),
])
def test_an_impossible_seed_on_the_conditional_path(exported, tmp_path, seed, message):
    checkpoint, _ = exported
    save_png(tmp_path / "in.png", np.zeros((8, 8, 1), dtype=np.uint8))
    line = usage_error(CliRunner().invoke(conditional, ["--checkpoint", str(checkpoint), "--condition", "superres",
                                                        "--input", str(tmp_path / "in.png"), "--seed", seed,
                                                        "--out", str(tmp_path / "out")]))
    assert "--seed" in line and message in line


def test_an_unknown_model_is_named_with_the_repositorys_models(exported, tmp_path):
    _, repository = exported
    line = one_line_error(CliRunner().invoke(ddn_generate, ["--repository", str(repository), "--model", "nosuch",
                                                            "--out", str(tmp_path / "out")]))
    assert line == f"Error: {repository} has no model 'nosuch'; its models: {NAME}"
    assert not (tmp_path / "out").exists()


def test_onnx_takes_a_model_file_or_its_version_folder(exported, tmp_path):
    _, repository = exported
    line = one_line_error(generate("--onnx", repository / NAME / "config.pbtxt", "--out", tmp_path / "out"))
    assert line == (f"Error: --onnx takes a model.onnx file (or an entry's version folder), not "
                    f"{repository / NAME / 'config.pbtxt'}; to run the entry '{NAME}', give --repository "
                    f"{repository} --model {NAME}")
    assert not (tmp_path / "out").exists()
    result = generate("--onnx", repository / NAME / "1", "--n", 2, "--out", tmp_path / "out")
    assert result.exit_code == 0 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000000.png",
                                                                                            "000001.png"]


def test_an_encoding_entry_is_refused_before_any_progress_bar_or_folder(exported, tmp_path):
    """Progress stays on: a bar drawn before the refusal would be a second line of output."""
    _, repository = exported
    result = CliRunner().invoke(ddn_generate, ["--repository", str(repository), "--model", f"{NAME}_encode",
                                               "--out", str(tmp_path / "out")])
    assert one_line_error(result) == (
        f"Error: {repository / f'{NAME}_encode' / '1' / 'model.onnx'} is the 'encode' graph, not a generation "
        f"graph; ddn-generate generates from a model's generation entry: --model {NAME}")
    assert not (tmp_path / "out").exists()
