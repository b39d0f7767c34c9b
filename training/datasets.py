"""Image datasets for the trainer: digits, an .npz, a folder of PNG/JPEG or MNIST IDX, loaded once as float32 [N, C, S,
S] in [-1, 1] with S a power of two (the models double the resolution block by block), then streamed as shuffled
minibatches.
"""
from __future__ import annotations

import gzip
import os
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ddn.images import to_float

__all__ = ["load_images", "batch_stream"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
EXPECTED = ("expected 'digits', a folder of PNG/JPEG images, an .npz with an 'images' array, "
            "or an MNIST *-images-idx3-ubyte[.gz] file")


def load_images(source: str, image_size: int | None = None) -> torch.Tensor:
    """Load a dataset as float32 [N, C, S, S] in [-1, 1]: padded (background -1) up to the next power of two, or
    resized to ``image_size``.
    """
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1 or image_size & (image_size - 1)):
        raise ValueError(f"image_size must be a power of two (1, 2, 4, ... 32, 64, ...), got {image_size!r}")
    images = _load_raw(source)  # float32 [N, C, H, W] in [-1, 1]
    images = _pad_to(images, max(images.shape[-2:]))
    if image_size is None:
        images = _pad_to(images, _next_power_of_two(images.shape[-1]))
    elif images.shape[-1] != image_size:
        images = _resize(images, image_size)
    return images.contiguous()


def batch_stream(images: torch.Tensor, batch_size: int, rng: torch.Generator) -> Iterator[torch.Tensor]:
    """Yield shuffled minibatches forever, one ``torch.randperm`` from ``rng`` per epoch (batches may straddle epochs),
    so replaying k batches reproduces the order and ``rng``'s state, as resume needs.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    n = int(images.shape[0])
    if n == 0:
        raise ValueError("cannot draw batches from zero images")
    pending = torch.empty(0, dtype=torch.long)
    while True:
        while pending.numel() < batch_size:
            pending = torch.cat([pending, torch.randperm(n, generator=rng)])
        index, pending = pending[:batch_size], pending[batch_size:]
        yield images[index.to(images.device)]


# ---------------------------------------------------------------------------
# sources


def _load_raw(source: str) -> torch.Tensor:
    if str(source) == "digits":
        return _load_digits()
    path = Path(os.fspath(source)).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path} ({EXPECTED})")
    if path.is_dir():
        return _load_folder(path)
    if path.suffix.lower() == ".npz":
        return _load_npz(path)
    if "idx3-ubyte" in path.name or _looks_like_idx(path):
        return _load_idx(path)
    raise ValueError(f"unrecognised dataset file {path} ({EXPECTED})")


def _load_digits() -> torch.Tensor:
    from sklearn.datasets import load_digits  # imported lazily: sklearn is slow to import

    images = load_digits().images.astype(np.float32)  # [N, 8, 8], values 0..16
    return torch.from_numpy(images / 8.0 - 1.0).unsqueeze(1)


def _load_npz(path: Path) -> torch.Tensor:
    # np.load treats any non-zip file as a pickle; say what is wrong instead of "pickled data".
    if not zipfile.is_zipfile(path):
        raise ValueError(f"cannot read npz file {path}: not a zip archive (write it with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
            array = archive["images"] if "images" in keys else None
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"cannot read npz file {path}: {err}") from None
    except ValueError as err:  # e.g. an object array, which would need unpickling
        raise ValueError(f"cannot read the 'images' array of {path} without pickle: {err}") from None
    if array is None:
        raise ValueError(f"{path} has no 'images' array (keys: {', '.join(keys) or 'none'})")
    return _from_array(array, path)


def _from_array(array: np.ndarray, path: Path) -> torch.Tensor:
    """[N, H, W] or [N, H, W, C] uint8 / float-in-[0, 1] -> float32 [N, C, H, W] in [-1, 1]."""
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise ValueError(f"'images' in {path} must be [N, H, W] or [N, H, W, C], got shape {list(array.shape)}")
    if array.shape[-1] not in (1, 3):
        raise ValueError(f"'images' in {path} has {array.shape[-1]} channels in its last axis, expected 1 or 3 "
                         f"(channels-last [N, H, W, C]); shape {list(array.shape)}")
    if min(array.shape[:3]) == 0:
        raise ValueError(f"'images' in {path} is empty, shape {list(array.shape)}")
    if array.dtype == np.uint8:
        images = to_float(array)
    elif np.issubdtype(array.dtype, np.floating):
        images = array.astype(np.float32)
        if not np.isfinite(images).all() or images.min() < 0.0 or images.max() > 1.0:
            raise ValueError(f"float 'images' in {path} must lie in [0, 1], got range "
                             f"[{np.nanmin(images):g}, {np.nanmax(images):g}] or non-finite values")
        images = images * 2.0 - 1.0
    else:
        raise ValueError(f"'images' in {path} has dtype {array.dtype}, expected uint8 or float in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _load_folder(folder: Path) -> torch.Tensor:
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ValueError(f"no PNG/JPEG images in folder {folder}")
    # First pass reads headers only, so a size mismatch is reported before decoding everything.
    sizes, modes = [], []
    for file in files:
        try:
            with Image.open(file) as im:
                sizes.append(im.size)
                modes.append(im.mode)
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read image {file}: {err}") from None
    for file, size in zip(files, sizes):
        if size != sizes[0]:
            raise ValueError(f"images in {folder} differ in size: {files[0].name} is {sizes[0][0]}x{sizes[0][1]}, "
                             f"{file.name} is {size[0]}x{size[1]} (width x height); resize them to one size first")
    mode = "L" if all(m in GRAY_MODES for m in modes) else "RGB"  # one colour image makes the set RGB
    pixels = np.empty((len(files), sizes[0][1], sizes[0][0], 1 if mode == "L" else 3), dtype=np.uint8)
    for i, file in enumerate(files):
        try:
            with Image.open(file) as im:
                pixels[i] = np.asarray(im.convert(mode)).reshape(pixels.shape[1:])
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise ValueError(f"cannot read image {file}: {err}") from None
    return _from_array(pixels, folder)


def _read_maybe_gzip(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the suffix says
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise ValueError(f"corrupt gzip in IDX file {path}: {err}") from None
    return data


def _looks_like_idx(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(4)
    return head[:2] == b"\x1f\x8b" or head[:3] == b"\x00\x00\x08"


def _load_idx(path: Path) -> torch.Tensor:
    data = _read_maybe_gzip(path)
    if len(data) < 16:
        raise ValueError(f"corrupt IDX file {path}: {len(data)} bytes is shorter than the 16-byte header")
    magic, n, rows, cols = (int(v) for v in np.frombuffer(data, dtype=">u4", count=4))
    if magic != IDX_IMAGES_MAGIC:
        hint = " (that is an IDX labels file)" if magic == IDX_LABELS_MAGIC else ""
        raise ValueError(f"corrupt IDX file {path}: bad magic {magic}, expected {IDX_IMAGES_MAGIC} "
                         f"for uint8 images{hint}")
    expected = 16 + n * rows * cols
    if len(data) != expected:
        raise ValueError(f"corrupt IDX file {path}: header says {n}x{rows}x{cols} images "
                         f"({expected} bytes) but the file has {len(data)} bytes")
    if n == 0 or rows == 0 or cols == 0:
        raise ValueError(f"IDX file {path} holds no images ({n}x{rows}x{cols})")
    array = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols)
    return _from_array(array, path)


# ---------------------------------------------------------------------------
# geometry


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _pad_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-pad [N, C, H, W] to size x size with the background value -1."""
    h, w = images.shape[-2:]
    if h == size and w == size:
        return images
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top), value=-1.0)


def _resize(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Square [N, C, H, H] -> [N, C, size, size]: area averaging down, bilinear up (no overshoot)."""
    mode = "area" if size < images.shape[-1] else "bilinear"
    extra = {} if mode == "area" else {"align_corners": False}
    # Chunked so that big datasets do not need a second full-size temporary.
    return torch.cat([F.interpolate(part, size=(size, size), mode=mode, **extra)
                      for part in images.split(chunk)]).clamp_(-1.0, 1.0)
