"""ddn.images: the pixel conversions and PNG files every CLI writes."""
import numpy as np
import pytest

from ddn.images import load_png, make_grid, save_grid, save_png, to_float, to_uint8


def test_float_to_uint8_rounds_and_clips():
    x = np.array([-2.0, -1.0, 0.0, 1.0, 3.0, -1 + 1 / 127.5])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255, 1]
    pixels = np.arange(256, dtype=np.uint8)
    assert np.array_equal(to_uint8(to_float(pixels)), pixels)


@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip(tmp_path, channels):
    image = np.random.default_rng(0).integers(0, 256, (5, 7, channels), dtype=np.uint8)
    save_png(tmp_path / "sub" / "a.png", image)
    assert np.array_equal(load_png(tmp_path / "sub" / "a.png"), image)


def test_load_png_converts_channels(tmp_path):
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    save_png(tmp_path / "red.png", rgb)
    assert load_png(tmp_path / "red.png", channels=1).shape == (4, 4, 1)
    save_png(tmp_path / "gray.png", rgb[..., :1])
    assert load_png(tmp_path / "gray.png", channels=3).shape == (4, 4, 3)


def test_grid_layout():
    images = np.stack([np.full((2, 3, 1), i, dtype=np.uint8) for i in range(1, 6)])
    grid = make_grid(images, ncols=2, padding=1, scale=2)
    assert grid.shape == (3 * (4 + 1) + 1, 2 * (6 + 1) + 1, 1)
    assert grid[1, 1, 0] == 1 and grid[1, 8, 0] == 2 and grid[6, 1, 0] == 3
    assert grid[0].max() == 0  # padding stays black
    assert make_grid(images).shape[1] == 3 * (3 + 1) + 1  # default: smallest square


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="image not found"):
        load_png(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        load_png(tmp_path / "junk.png")
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "x.png", np.zeros((2, 2, 1), dtype=np.float32))
    with pytest.raises(ValueError, match="zero images"):
        save_grid(tmp_path / "g.png", np.zeros((0, 2, 2, 1), dtype=np.uint8))
