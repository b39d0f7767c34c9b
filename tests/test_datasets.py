"""ddn.training.datasets: every source loads to [N, C, S, S] in [-1, 1]; bad inputs fail with clear messages."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddn.training.datasets import batch_stream, load_images

MNIST_8K = Path(__file__).parents[1].parent / "shared/data/mnist_8k.npz"


def _write_idx(path: Path, images: np.ndarray, magic: int = 2051, compress: bool = False) -> Path:
    data = struct.pack(">IIII", magic, *images.shape) + images.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def _scaled(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0)


def test_digits_shape_and_range():
    images = load_images("digits")
    assert images.dtype == torch.float32 and images.shape == (1797, 1, 8, 8)
    assert images.min() == -1.0 and images.max() == 1.0


def test_npz_uint8_is_padded_to_power_of_two(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=pixels)
    images = load_images(str(tmp_path / "d.npz"))
    assert images.shape == (5, 1, 32, 32)
    assert torch.equal(images[:, 0, 2:30, 2:30], _scaled(pixels))
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (images[:, 0][:, border] == -1.0).all()


def test_npz_rgb_and_float(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", images=rgb)
    images = load_images(str(tmp_path / "rgb.npz"))
    assert images.shape == (3, 3, 16, 16)
    assert torch.equal(images, _scaled(rgb).permute(0, 3, 1, 2))
    np.savez(tmp_path / "f.npz", images=np.array([[[0.0, 0.5], [1.0, 0.25]]]))
    assert load_images(str(tmp_path / "f.npz")).flatten().tolist() == [-1.0, 0.0, 1.0, -0.5]


@pytest.mark.parametrize("channels", [1, 3])
def test_png_folder_round_trip(tmp_path, channels):
    pixels = np.random.default_rng(2).integers(0, 256, (4, 16, 16, channels), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image[..., 0] if channels == 1 else image).save(tmp_path / f"{i:02d}.png")
    images = load_images(str(tmp_path))
    assert images.shape == (4, channels, 16, 16)
    assert torch.equal(images, _scaled(pixels).permute(0, 3, 1, 2))


def test_rgba_folder_drops_alpha(tmp_path):
    rgba = np.random.default_rng(3).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    images = load_images(str(tmp_path))
    assert images.shape == (1, 3, 8, 8)
    assert torch.equal(images[0], _scaled(rgba[..., :3]).permute(2, 0, 1))


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    pixels = np.random.default_rng(4).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    name = "t10k-images-idx3-ubyte" + (".gz" if compress else "")
    images = load_images(str(_write_idx(tmp_path / name, pixels, compress=compress)))
    assert images.shape == (3, 1, 32, 32)
    assert torch.equal(images[:, 0, 2:30, 2:30], _scaled(pixels))


def test_image_size_resizes(tmp_path):
    assert load_images("digits", image_size=4).shape == (1797, 1, 4, 4)
    assert load_images("digits", image_size=16).shape == (1797, 1, 16, 16)
    pixels = np.full((2, 28, 28), 255, dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=pixels)
    small = load_images(str(tmp_path / "d.npz"), image_size=16)
    assert small.shape == (2, 1, 16, 16) and torch.allclose(small, torch.ones_like(small))
    with pytest.raises(ValueError, match="power of two"):
        load_images("digits", image_size=12)


def test_bad_paths_and_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found.*missing.npz"):
        load_images(str(tmp_path / "missing.npz"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="no PNG/JPEG images in folder .*empty"):
        load_images(str(tmp_path / "empty"))
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with pytest.raises(ValueError, match="unrecognised dataset file .*data.csv"):
        load_images(str(tmp_path / "data.csv"))


def test_bad_folders(tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("L", (8, 8)).save(mixed / "a.png")
    Image.new("L", (8, 6)).save(mixed / "b.png")
    with pytest.raises(ValueError, match=r"differ in size: a.png is 8x8, b.png is 8x6"):
        load_images(str(mixed))
    junk = tmp_path / "junk"
    junk.mkdir()
    Image.new("L", (8, 8)).save(junk / "a.png")
    (junk / "b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot read image .*b.jpg"):
        load_images(str(junk))


def test_bad_npz(tmp_path):
    np.savez(tmp_path / "k.npz", x=np.zeros(3), labels=np.zeros(3))
    with pytest.raises(ValueError, match=r"k.npz has no 'images' array \(keys: x, labels\)"):
        load_images(str(tmp_path / "k.npz"))
    np.savez(tmp_path / "nd.npz", images=np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"nd.npz must be \[N, H, W\] or \[N, H, W, C\], got shape \[4, 4\]"):
        load_images(str(tmp_path / "nd.npz"))
    np.savez(tmp_path / "c.npz", images=np.zeros((2, 8, 8, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="c.npz has 2 channels"):
        load_images(str(tmp_path / "c.npz"))
    np.savez(tmp_path / "r.npz", images=np.full((1, 4, 4), 2.0))
    with pytest.raises(ValueError, match=r"r.npz must lie in \[0, 1\]"):
        load_images(str(tmp_path / "r.npz"))
    np.savez(tmp_path / "i.npz", images=np.zeros((1, 4, 4), dtype=np.int16))
    with pytest.raises(ValueError, match="i.npz has dtype int16"):
        load_images(str(tmp_path / "i.npz"))
    np.savez(tmp_path / "o.npz", images=np.array([None, 1], dtype=object))
    with pytest.raises(ValueError, match="o.npz without pickle"):
        load_images(str(tmp_path / "o.npz"))
    (tmp_path / "z.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read npz file .*z.npz"):
        load_images(str(tmp_path / "z.npz"))


def test_corrupt_idx(tmp_path):
    pixels = np.zeros((2, 4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="corrupt IDX file .*labels-idx3-ubyte: bad magic 2049"):
        load_images(str(_write_idx(tmp_path / "labels-idx3-ubyte", pixels, magic=2049)))
    short = _write_idx(tmp_path / "short-images-idx3-ubyte", pixels)
    short.write_bytes(short.read_bytes()[:-5])
    with pytest.raises(ValueError, match="corrupt IDX file .*short-images-idx3-ubyte: header says 2x4x4"):
        load_images(str(short))
    (tmp_path / "bad-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + b"\x00" * 20)
    with pytest.raises(ValueError, match="corrupt gzip in IDX file .*bad-images-idx3-ubyte.gz"):
        load_images(str(tmp_path / "bad-images-idx3-ubyte.gz"))


def test_batch_stream_reshuffles_and_replays():
    images = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1)
    gen = torch.Generator().manual_seed(0)
    stream = batch_stream(images, 4, gen)
    batches = [next(stream).flatten() for _ in range(5)]  # 20 images = two full epochs
    assert all(b.shape == (4,) for b in batches)
    seen = torch.cat(batches)
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert not torch.equal(seen[:10], seen[10:])  # reshuffled each epoch
    # Same starting state, same batches and same RNG state afterwards (what resume replays).
    gen2 = torch.Generator().manual_seed(0)
    stream2 = batch_stream(images, 4, gen2)
    assert all(torch.equal(next(stream2).flatten(), b) for b in batches)
    assert torch.equal(gen.get_state(), gen2.get_state())
    assert next(batch_stream(images, 25, torch.Generator())).shape == (25, 1, 1, 1)
    with pytest.raises(ValueError, match="batch_size"):
        next(batch_stream(images, 0, torch.Generator()))


@pytest.mark.skipif(not MNIST_8K.exists(), reason=f"shared MNIST subset not present at {MNIST_8K}")
def test_shared_mnist_8k():
    images = load_images(str(MNIST_8K))
    assert images.shape == (8000, 1, 32, 32)
    assert images.min() == -1.0 and images.max() == 1.0
