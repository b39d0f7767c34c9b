"""Guided graphs (argmin inside the graph) agree with the PyTorch model's encode and guided_sample."""
import numpy as np
import pytest
import torch

from ddn.export.graphs import build_graphs, float_to_pixels, model_to_float, pixels_to_model
from ddn.repository_contract import GRAPH_KINDS, ONNX_FILE, entry_name, latest_version, onnxruntime_session
from ddn.training.checkpoint import load_generator
from ddn.training.guidance import Colorization, Denoising, Inpainting, SuperResolution
from ddn.training.networks import SingleShotGenerator

FACTOR = 2  # conftest's rgb_repository: the super-resolution factor its graphs were exported with


@pytest.fixture(scope="module")
def model(rgb_repository):
    return load_generator(rgb_repository.parent / "rgb.safetensors").eval()


@pytest.fixture(scope="module")
def sessions(rgb_repository):
    return {kind: onnxruntime_session(latest_version(rgb_repository / entry_name("rgb", kind)) / ONNX_FILE)
            for kind in GRAPH_KINDS}


def model_images(model, batch: int, seed: int) -> np.ndarray:
    """uint8 [B, H, W, C] images the model can make (decoded random codes)."""
    codes = np.random.default_rng(seed).integers(0, 8, (batch, model.num_layers))
    return float_to_pixels(model_to_float(model.decode(codes))).numpy()


def as_model(pixels: np.ndarray) -> torch.Tensor:
    return pixels_to_model(torch.from_numpy(pixels))


def assert_images_close(pixels: np.ndarray, images: torch.Tensor) -> None:
    want = float_to_pixels(model_to_float(images)).numpy()
    assert pixels.shape == want.shape and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - want.astype(int)).max() <= 1


@pytest.mark.parametrize("batch", [1, 4])
def test_encode_graph_gives_pytorch_codes_and_decoding_them_reproduces_decode(model, sessions, batch):
    pixels = model_images(model, batch, seed=batch)
    (codes,) = sessions["encode"].run(None, {"images": pixels})
    want = model.encode(as_model(pixels))
    assert codes.dtype == np.int32 and codes.shape == (batch, model.num_layers)
    np.testing.assert_array_equal(codes, want.numpy())
    images, _ = sessions["generate"].run(None, {"codes": codes})
    assert_images_close(images, model.decode(codes))


@pytest.mark.parametrize("batch", [1, 3])
def test_superres_graph_matches_guided_sample(model, sessions, batch):
    full = as_model(model_images(model, batch, seed=10 + batch))
    low = float_to_pixels(model_to_float(torch.nn.functional.avg_pool2d(full, FACTOR))).numpy()
    assert low.shape == (batch, 8 // FACTOR, 8 // FACTOR, 3)
    images, codes = sessions["superres"].run(["images", "codes"], {"low_res": low})
    condition = SuperResolution(as_model(low))
    np.testing.assert_array_equal(codes, model.guided_codes(condition).numpy())
    assert_images_close(images, model.guided_sample(condition))


@pytest.mark.parametrize("batch", [1, 3])
def test_inpaint_graph_matches_guided_sample(model, sessions, batch):
    pixels = model_images(model, batch, seed=20 + batch)
    mask = np.ones((batch, 8, 8, 1), dtype=np.uint8)
    mask[:, 2:6, 1:5] = 0
    images, codes = sessions["inpaint"].run(["images", "codes"], {"image": pixels, "mask": mask})
    condition = Inpainting(as_model(pixels), torch.from_numpy(mask).permute(0, 3, 1, 2).float())
    np.testing.assert_array_equal(codes, model.guided_codes(condition).numpy())
    assert_images_close(images, model.guided_sample(condition))
    # 255 means known as well as 1 does (nonzero = known).
    images_255, codes_255 = sessions["inpaint"].run(["images", "codes"], {"image": pixels, "mask": mask * 255})
    np.testing.assert_array_equal(codes_255, codes)


def test_colorize_graph_matches_guided_sample(model, sessions):
    rgb = as_model(model_images(model, 4, seed=30))
    gray = float_to_pixels(model_to_float((rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True))).numpy()
    images, codes = sessions["colorize"].run(["images", "codes"], {"gray": gray})
    condition = Colorization(as_model(gray))
    np.testing.assert_array_equal(codes, model.guided_codes(condition).numpy())
    assert_images_close(images, model.guided_sample(condition))


@pytest.mark.parametrize("batch", [1, 3])
def test_denoise_graph_matches_guided_sample(model, sessions, batch):
    clean = as_model(model_images(model, batch, seed=40 + batch))
    noise = torch.from_numpy(np.random.default_rng(batch).normal(0, 0.3, clean.shape).astype(np.float32))
    noisy = float_to_pixels(model_to_float((clean + noise).clamp(-1, 1))).numpy()
    images, codes = sessions["denoise"].run(["images", "codes"], {"image": noisy})
    condition = Denoising(as_model(noisy))
    np.testing.assert_array_equal(codes, model.guided_codes(condition).numpy())
    assert_images_close(images, model.guided_sample(condition))
    # The noise is not what the model reproduces: the result is nearer the clean image than the noisy input is.
    clean_pixels = float_to_pixels(model_to_float(clean)).numpy().astype(float)
    assert np.abs(images - clean_pixels).mean() < np.abs(noisy - clean_pixels).mean()


def test_colorize_needs_an_rgb_model():
    gray_model = SingleShotGenerator(image_size=8, image_channels=1, channels=16, k=8)
    assert "colorize" not in build_graphs(gray_model)
