"""Zero-shot conditional generation from a briefly trained digits model: API and CLI."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from ddn.conditions import CONDITIONS, MASK
from ddn.images import load_png, save_png, to_float, to_uint8
from ddn.training.datasets import load_images
from ddn.training.guidance import DISTANCES, SuperResolution
from ddn.training.run_outputs import images_to_uint8
from ddn.training.train_loop import train
from ddn.training.train_state import LAST
from ddn.training.zscg import generate_conditional, model_layout
from ddn.training.zscg_cli import conditional
from cli_helpers import one_line_error, usage_error
from train_helpers import tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits model after 150 steps of the real training loop, and its checkpoint."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("zscg") / "run"
        result = train(tiny(preset="cpu", channels=32, k=16, steps=150, batch=64, chain_dropout=0.05),
                       out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return result.sampled_model.eval(), out / LAST


def digits(n: int) -> torch.Tensor:
    return load_images("digits")[-n:]


def to_png(path, image: torch.Tensor):
    """[C, H, W] in [-1, 1] -> PNG file."""
    return save_png(path, to_uint8(image.permute(1, 2, 0).numpy()))


def test_superresolution_fits_the_condition_better_than_unconditional_samples(trained):
    model, _ = trained
    targets = digits(32)
    low = F.avg_pool2d(targets, 2)  # 4x4 conditions
    guided = model.guided_sample(SuperResolution(low))
    unconditional = model.sample(seed=list(range(32)))
    guided_err = (F.avg_pool2d(guided, 2) - low).pow(2).mean()
    unconditional_err = (F.avg_pool2d(unconditional, 2) - low).pow(2).mean()
    assert guided_err < 0.3 * unconditional_err, (float(guided_err), float(unconditional_err))


def test_generate_conditional_writes_results_and_grid(trained, tmp_path):
    model, checkpoint = trained
    target = digits(1)[0]
    to_png(tmp_path / "low.png", F.avg_pool2d(target[None], 2)[0])
    assert generate_conditional(checkpoint, "superres", {"input": tmp_path / "low.png"}, "top2", 5, tmp_path / "out",
                                1) == 5
    paths = sorted((tmp_path / "out").glob("result_*.png"))
    assert [p.name for p in paths] == [f"result_{i:03d}.png" for i in range(5)]
    results = np.stack([load_png(p) for p in paths])
    assert results.shape == (5, 8, 8, 1)
    assert len({r.tobytes() for r in results}) > 1  # top2 draws differ
    assert (tmp_path / "out" / "grid.png").exists() and (tmp_path / "out" / "condition.png").exists()
    # top1 is deterministic and equals the API's guided sample of the same (PNG-quantised) condition.
    generate_conditional(checkpoint, "superres", {"input": tmp_path / "low.png"}, "top1", 2, tmp_path / "top1", 0)
    again = sorted((tmp_path / "top1").glob("result_*.png"))
    low = torch.from_numpy(to_float(load_png(tmp_path / "low.png"))).permute(2, 0, 1)[None]
    want = images_to_uint8(model.guided_sample(SuperResolution(low.expand(2, -1, -1, -1)), selection="top1"))
    np.testing.assert_array_equal(np.stack([load_png(p) for p in again]), want)


@pytest.mark.parametrize("condition", [name for name, spec in CONDITIONS.items() if spec.supports(1)])
def test_cli_runs_each_condition(trained, tmp_path, condition):
    model, checkpoint = trained
    spec = CONDITIONS[condition]
    layout = dataclasses.replace(model_layout(model, condition), superres_factor=2)
    shapes = {item.name: item.shape(layout) for item in spec.inputs}
    observed = DISTANCES[condition].observe(digits(1), shapes, np.random.default_rng(0))
    args = []
    for item in spec.inputs:
        pixels = observed[item.name][0].permute(1, 2, 0).numpy()
        pixels = (pixels * 255).astype(np.uint8) if item.values == MASK else to_uint8(pixels)
        args += [f"--{item.option}", str(save_png(tmp_path / f"{item.name}.png", pixels))]
    result = CliRunner().invoke(conditional, ["--checkpoint", str(checkpoint), "--condition", condition, *args,
                                              "--n", "3", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "condition.png", "grid.png", "result_000.png", "result_001.png", "result_002.png"]


@pytest.mark.parametrize("condition, extra, message", [
    ("colorize", [], "Error: colorize needs an RGB model; this one makes 1-channel images"),
    ("superres", [], "Error: superres: --input in.png is 8x8; it must be a power of two smaller than the model's 8x8"),
    ("inpaint", ["--mask", "rgb.png"], "Error: inpaint: --mask rgb.png has 3 channel(s); it must have 1 (grayscale)"),
])
def test_cli_errors_are_one_line(trained, tmp_path, monkeypatch, condition, extra, message):
    _, checkpoint = trained
    monkeypatch.chdir(tmp_path)
    to_png(tmp_path / "in.png", digits(1)[0])  # full size: wrong for superres
    save_png(tmp_path / "rgb.png", np.zeros((8, 8, 3), np.uint8))
    result = CliRunner().invoke(conditional, ["--checkpoint", str(checkpoint), "--condition", condition,
                                              "--input", "in.png", *extra])
    assert one_line_error(result).startswith(message)


@pytest.mark.parametrize("condition, extra, message", [
    ("inpaint", [], "--condition inpaint needs --mask (the known pixels"),
    ("superres", ["--mask", "in.png"], "--mask does not apply to --condition superres"),
])
def test_cli_usage_errors(trained, tmp_path, monkeypatch, condition, extra, message):
    _, checkpoint = trained
    monkeypatch.chdir(tmp_path)
    to_png(tmp_path / "in.png", digits(1)[0])
    result = CliRunner().invoke(conditional, ["--checkpoint", str(checkpoint), "--condition", condition,
                                              "--input", "in.png", *extra])
    assert message in usage_error(result)


def test_cli_refuses_a_bad_checkpoint_or_image(trained, tmp_path):
    _, checkpoint = trained
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    (tmp_path / "bad.png").write_bytes(b"garbage")
    runner = CliRunner()
    result = runner.invoke(conditional, ["--checkpoint", str(tmp_path / "bad.safetensors"), "--condition", "superres",
                                         "--input", str(tmp_path / "bad.png")])
    assert result.exit_code == 1 and "corrupt or truncated" in result.output
    result = runner.invoke(conditional, ["--checkpoint", str(checkpoint), "--condition", "superres",
                                         "--input", str(tmp_path / "bad.png")])
    assert result.exit_code == 1 and "cannot read image" in result.output
