"""An exported DDN generation graph run in this process by ONNX Runtime (no server).

It offers the generation half of :class:`ddn.serving.client.DDNClient`
(``num_layers``, ``branch_counts``, ``codes_for_seeds``, ``generate``), so the
batch CLI and the benchmarks treat a local file and a Triton server alike, and
the same seed gives the same pixels through either.

The model's structure (L, K per layer, image shape) comes from the ``ddn.json``
that ``ddn-export`` writes beside the version folders: ``<repo>/<G>/ddn.json``
for ``<repo>/<G>/<version>/model.onnx``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from ddn.codes import codes_from_seed, validate_codes


def latest_version(model_dir: Path) -> Path:
    """The highest numbered version folder of a repository entry."""
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    if not versions:
        raise FileNotFoundError(f"no version folder (1/, 2/, ...) in {model_dir}")
    return max(versions, key=lambda p: int(p.name))


class OnnxModel:
    """A generation graph (``codes`` int32 [B, L] -> ``images`` uint8 [B, H, W, C]) in ONNX Runtime."""

    def __init__(self, onnx_path: str | Path, metadata_path: str | Path | None = None,
                 batch_size: int | None = None, threads: int = 0):
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        meta_path = Path(metadata_path) if metadata_path else self.path.resolve().parent.parent / "ddn.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: ddn-export writes it beside the version folders; "
                                    "pass the ONNX file inside an exported repository")
        self.metadata = json.loads(meta_path.read_text())
        if self.metadata.get("graph", "generate") != "generate":
            raise ValueError(f"{self.path} is the {self.metadata['graph']!r} graph; ddn-generate needs the "
                             "generation graph (the entry named after the model, without a suffix)")
        # The same session settings as the python-backend twin's model.py, so both run the same kernels.
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    @classmethod
    def from_repository(cls, repository: str | Path, model: str, version: str | None = None,
                        batch_size: int | None = None, threads: int = 0) -> "OnnxModel":
        model_dir = Path(repository) / model
        folder = model_dir / version if version else latest_version(model_dir)
        return cls(folder / "model.onnx", model_dir / "ddn.json", batch_size, threads)

    @property
    def num_layers(self) -> int:
        return int(self.metadata["num_layers"])

    @property
    def branch_counts(self) -> list[int]:
        return [int(k) for k in self.metadata["branch_counts"]]

    @property
    def max_batch_size(self) -> int:
        return int(self.metadata.get("max_batch_size", 64))

    def codes_for_seeds(self, seeds: int | Sequence[int]) -> np.ndarray:
        return codes_from_seed(seeds, self.num_layers, self.branch_counts)

    def generate(self, seeds: int | Sequence[int] | None = None, codes: np.ndarray | None = None,
                 output: str = "images") -> np.ndarray:
        """Same contract as :meth:`DDNClient.generate`: uint8 [B, H, W, C] for seeds or checked codes.

        Runs ``batch_size`` rows per session call (all at once when None).
        """
        if (seeds is None) == (codes is None):
            raise ValueError("generate() takes exactly one of seeds or codes")
        codes = self.codes_for_seeds(seeds) if seeds is not None else validate_codes(
            codes, self.num_layers, self.branch_counts)
        if output not in self.output_names:
            raise ValueError(f"{self.path} has no output {output!r}; its outputs are {self.output_names}")
        if len(codes) == 0:  # the graph's reshapes cannot take an empty batch
            return np.zeros((0, *self.metadata["image_shape"]), np.uint8 if output == "images" else np.float32)
        step = self.batch_size or len(codes)
        return np.concatenate([self.session.run([output], {"codes": codes[i:i + step]})[0]
                               for i in range(0, len(codes), step)])

    def close(self) -> None:
        """Release the session (its memory and threads)."""
        self.session = None
