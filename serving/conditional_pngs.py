"""``ddn-generate --condition``: condition image files in, the served condition graph's results out as PNGs.

The condition's first file option (``--input``) is an image file or a folder
of them, one result each, written as ``<out>/<input stem>.png``; its other
files (``--mask``) apply to every input. Files are read and checked through
the condition registry (:meth:`ddn.conditions.ConditionSpec.read_files`), then
run by the source's ``<model>_<condition>`` graph: ONNX Runtime in this
process or a Triton server, the same graph either way, so both write the same
bytes. Results that exist are skipped, so a rerun finishes an interrupted run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Protocol

import numpy as np
from tqdm import tqdm

from ddn.conditions import condition_spec
from ddn.repository_contract import GraphLayout

from .generate_cli import write_png

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ConditionSource(Protocol):
    """What the command needs of a source: OnnxModel (local) and DDNClient (Triton) both provide it."""

    def condition_layout(self, kind: str) -> GraphLayout: ...

    def conditional(self, kind: str, **inputs: np.ndarray) -> dict[str, np.ndarray]: ...


def input_images(path: Path) -> list[Path]:
    """``path`` itself, or the image files in the folder ``path`` (by name); ValueError if there are none."""
    if not path.is_dir():
        return [path]
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not images:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    stems = [p.stem for p in images]
    twins = sorted({stem for stem in stems if stems.count(stem) > 1})
    if twins:
        raise ValueError(f"{path} holds several images named {twins[0]!r}; their results would share one file")
    return images


def generate_conditional_pngs(source: ConditionSource, condition: str, files: Mapping[str, Path], out_dir: Path,
                              wave: int, progress: bool = True) -> tuple[int, int]:
    """Write ``<out_dir>/<stem>.png`` for every input whose result is missing: (how many written, how many inputs).

    Inputs go to the source ``wave`` at a time, so memory stays the same for
    any number of input files.
    """
    spec = condition_spec(condition)
    layout = source.condition_layout(condition)
    per_sample = spec.inputs[0].option
    inputs = input_images(Path(files[per_sample]))
    missing = [path for path in inputs if not (out_dir / f"{path.stem}.png").is_file()]
    with tqdm(total=len(missing), unit="img", disable=not progress, desc=condition) as bar:
        for start in range(0, len(missing), wave):
            part = missing[start:start + wave]
            samples = [spec.read_files(layout, {**files, per_sample: path}) for path in part]
            batch = {item.name: np.stack([sample[item.name] for sample in samples]) for item in spec.inputs}
            for path, image in zip(part, source.conditional(condition, **batch)["images"]):
                write_png(out_dir / f"{path.stem}.png", image)
            bar.update(len(part))
    return len(missing), len(inputs)
