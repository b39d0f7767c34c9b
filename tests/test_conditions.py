"""The condition registry: one vocabulary, both halves cover the same names, inputs checked with one-line errors.

Served through a real server and ONNX Runtime: ``test_serving_conditions.py``.
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import pytest
import torch

from ddn.condition_cli import condition_files, file_options
from ddn.conditions import CONDITIONS, MASK, ConditionError, condition_spec
from ddn.export.graphs import ConditionGraph, build_graphs
from ddn.images import save_png
from ddn.repository_contract import GRAPH_KINDS, GraphLayout
from ddn.training.guidance import (DISTANCES, Colorization, Denoising, Inpainting, SuperResolution,
                                   condition_from_inputs)
from ddn.training.networks import SingleShotGenerator

GRAY = GraphLayout("inpaint", 4, (8,) * 4, 8, 1)
RGB_SUPERRES = GraphLayout("superres", 4, (8,) * 4, 8, 3, superres_factor=4)


def test_both_halves_of_the_registry_name_the_same_conditions() -> None:
    assert list(DISTANCES) == list(CONDITIONS)
    assert GRAPH_KINDS == ("generate", "encode", *CONDITIONS)
    for name, spec in CONDITIONS.items():
        assert spec.name == name
        names = [i.name for i in spec.inputs]
        assert len(set(names)) == len(names), name
        assert condition_spec(name) is spec
    with pytest.raises(ConditionError, match="unknown condition 'sharpen'; choose from superres, colorize, inpaint, "
                                             "denoise"):
        condition_spec("sharpen")


def test_every_condition_becomes_a_graph_with_the_registry_inputs() -> None:
    torch.manual_seed(0)
    rgb = SingleShotGenerator(image_size=8, image_channels=3, channels=16, blocks=1, k=8).eval()
    graphs = build_graphs(rgb, superres_factor=4)
    assert list(graphs) == list(GRAPH_KINDS)
    rng = np.random.default_rng(0)
    for name, spec in CONDITIONS.items():
        graph = graphs[name]
        assert isinstance(graph, ConditionGraph) and graph.layout().graph == name
        assert tuple(graph.inputs()) == spec.input_specs(graph.layout())
        examples = graph.example_inputs(3, rng)
        checked = spec.check(graph.layout(), dict(zip([i.name for i in spec.inputs], examples)))
        assert [a.shape[0] for a in checked.values()] == [3] * len(spec.inputs)
    assert graphs["superres"].inputs()[0].shape == (2, 2, 3)
    gray = SingleShotGenerator(image_size=8, image_channels=1, channels=16, blocks=1, k=8)
    assert "colorize" not in build_graphs(gray) and "inpaint" in build_graphs(gray)


def test_served_inputs_become_the_distances_pytorch_uses() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    as_model = torch.from_numpy(image).float().permute(0, 3, 1, 2) / 127.5 - 1
    mask = np.zeros((2, 8, 8, 1), np.uint8)
    mask[:, :, :3] = 1
    candidates = torch.randn(2, 5, 3, 8, 8)
    built = condition_from_inputs("inpaint", {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask)})
    want = Inpainting(as_model, torch.from_numpy(mask).permute(0, 3, 1, 2).float())
    torch.testing.assert_close(built.distance(candidates), want.distance(candidates), rtol=0, atol=0)
    assert isinstance(condition_from_inputs("superres", {"low_res": torch.from_numpy(image[:, :2, :2])}),
                      SuperResolution)
    assert isinstance(condition_from_inputs("colorize", {"gray": torch.from_numpy(image[..., :1])}), Colorization)


def test_denoising_is_l2_to_the_noisy_image_it_observes() -> None:
    image = np.random.default_rng(2).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    as_model = torch.from_numpy(image).float().permute(0, 3, 1, 2) / 127.5 - 1
    candidates = torch.randn(2, 5, 3, 8, 8)
    denoise = condition_from_inputs("denoise", {"image": torch.from_numpy(image)})
    assert isinstance(denoise, Denoising)
    torch.testing.assert_close(denoise.distance(candidates), ((candidates - as_model[:, None]) ** 2).mean((2, 3, 4)))

    clean = torch.rand(4, 1, 8, 8) * 2 - 1
    noisy = Denoising.observe(clean, {"image": (8, 8, 1)}, np.random.default_rng(0))["image"]
    assert noisy.abs().max() <= 1 and 0.1 < float((noisy - clean).std()) < 0.3
    other = torch.rand(4, 1, 8, 8) * 2 - 1
    distances = Denoising(noisy).distance(torch.stack([other, clean], dim=1))
    assert distances.argmin(1).tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize("name, inputs, message", [
    ("superres", {"low_res": np.zeros((2, 4, 4, 1), np.float32)}, "superres: input 'low_res' must be uint8, "
                                                                  "got float32"),
    ("inpaint", {"image": np.zeros((2, 8, 8, 3), np.uint8), "mask": np.ones((2, 8, 8, 1), np.uint8)},
     "inpaint: input 'image' [B, H, W, C] has 3 channel(s); it must have 1 (grayscale)"),
    ("inpaint", {"image": np.zeros((2, 4, 4, 1), np.uint8), "mask": np.ones((2, 8, 8, 1), np.uint8)},
     "inpaint: input 'image' [B, H, W, C] is 4x4; it must be 8x8 (the model's image size)"),
    ("inpaint", {"image": np.zeros((2, 8, 8, 1), np.uint8), "mask": np.ones((2, 8, 6, 1), np.uint8)},
     "inpaint: input 'mask' [B, H, W, C] is 6x8; it must be square"),
    ("superres", {"low_res": np.zeros((8, 8), np.uint8)},
     "superres: input 'low_res' [B, H, W, C] has shape [8]; it must be [H, W, C]"),
    ("superres", {"images": np.zeros((2, 4, 4, 1), np.uint8)}, "superres takes inputs low_res; got images"),
    ("inpaint", {"image": np.zeros((2, 8, 8, 1), np.uint8)}, "inpaint takes inputs image, mask; got image"),
    ("inpaint", {"image": np.zeros((2, 8, 8, 1), np.uint8), "mask": np.full((2, 8, 8, 1), 255, np.uint8)},
     "inpaint: input 'mask' must hold only 0 (fill in) and 1 (keep), found 255"),
    ("inpaint", {"image": np.zeros((2, 8, 8, 1), np.uint8), "mask": np.ones((3, 8, 8, 1), np.uint8)},
     "inpaint: inputs have different batch sizes [2, 3]"),
    ("colorize", {"gray": np.zeros((2, 8, 8, 1), np.uint8)}, "colorize needs an RGB model; this one makes "
                                                            "1-channel images"),
    ("superres", {"low_res": np.zeros((2, 3, 3, 1), np.uint8)},
     "superres: input 'low_res' [B, H, W, C] is 3x3; it must be a power of two smaller than the model's 8x8 "
     "(e.g. 4 or 2)"),
])
def test_array_inputs_are_checked_with_one_line_errors(name: str, inputs: dict, message: str) -> None:
    with pytest.raises(ConditionError) as error:
        CONDITIONS[name].check(GraphLayout(name, 4, (8,) * 4, 8, 1), inputs)
    assert str(error.value) == message


def test_a_superres_layout_with_a_factor_fixes_the_low_res_side() -> None:
    spec = CONDITIONS["superres"]
    assert spec.check(RGB_SUPERRES, {"low_res": np.zeros((1, 2, 2, 3), np.uint8)})["low_res"].shape == (1, 2, 2, 3)
    with pytest.raises(ConditionError, match=r"is 4x4; it must be 2x2 \(the model's 8x8 images / superres factor 4\)"):
        spec.check(RGB_SUPERRES, {"low_res": np.zeros((1, 4, 4, 3), np.uint8)})
    assert spec.input_specs(GraphLayout("superres", 4, (8,) * 4, 8, 3))[0].shape == (-1, -1, 3)


def test_mask_files_are_black_and_white(tmp_path: Path) -> None:
    spec = CONDITIONS["inpaint"]
    image = save_png(tmp_path / "in.png", np.full((8, 8, 1), 90, np.uint8))
    mask = np.zeros((8, 8, 1), np.uint8)
    mask[:4] = 255
    inputs = spec.read_files(GRAY, {"input": image, "mask": save_png(tmp_path / "mask.png", mask)})
    assert inputs["mask"].dtype == np.uint8 and set(np.unique(inputs["mask"])) == {0, 1}
    assert inputs["mask"][:4].all() and not inputs["mask"][4:].any()
    assert next(i for i in spec.inputs if i.name == "mask").values == MASK
    mask[0, 0] = 128
    with pytest.raises(ConditionError) as error:
        spec.read_files(GRAY, {"input": image, "mask": save_png(tmp_path / "gray.png", mask)})
    assert str(error.value) == (f"inpaint: --mask {tmp_path / 'gray.png'} must be black (fill in) and white (keep) "
                                "only; found gray level 128")
    with pytest.raises(ConditionError, match=r"--input .*rgb.png has 3 channel\(s\); it must have 1 \(grayscale\)"):
        spec.read_files(GRAY, {"input": save_png(tmp_path / "rgb.png", np.zeros((8, 8, 3), np.uint8)),
                               "mask": tmp_path / "mask.png"})
    with pytest.raises(ValueError, match="image not found"):
        spec.read_files(GRAY, {"input": tmp_path / "missing.png", "mask": tmp_path / "mask.png"})


def test_cli_options_derive_from_the_registry() -> None:
    assert list(file_options()) == ["input", "mask"]
    assert "inpaint: the known pixels" in file_options()["mask"]
    paths = {"input_path": Path("a.png"), "mask_path": None}
    assert condition_files("superres", paths) == {"input": Path("a.png")}
    with pytest.raises(click.UsageError, match=r"--condition inpaint needs --mask \(the known pixels"):
        condition_files("inpaint", paths)
    with pytest.raises(click.UsageError, match="--mask does not apply to --condition superres"):
        condition_files("superres", {**paths, "mask_path": Path("m.png")})
    assert condition_files(None, {"input_path": None, "mask_path": None}) == {}
    with pytest.raises(click.UsageError, match="--input needs --condition"):
        condition_files(None, paths)
