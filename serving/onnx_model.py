"""An exported DDN generation graph run in this process by ONNX Runtime (no server).

It offers the generation half of :class:`ddn.serving.client.DDNClient`
(``layout``, ``codes_for_seeds``, ``generate``), so the batch CLI and the
benchmarks treat a local file and a Triton server alike, and the same seed
gives the same pixels through either.

The model's layout (L, K per layer, image shape) and batch limit come from the
entry's ``ddn.json`` (:func:`ddn.repository_contract.read_description`): for
``<repo>/<G>/<version>/model.onnx`` that is ``<repo>/<G>/ddn.json``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ddn.codes import codes_from_seed, validate_codes
from ddn.repository_contract import (ONNX_FILE, GraphLayout, RepositoryError, latest_version, onnxruntime_session,
                                     read_description)


def _onnxruntime_errors() -> tuple[type[Exception], ...]:
    """What ONNX Runtime raises for a file it cannot load or run (none of them is a RuntimeError)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return state.Fail, state.InvalidArgument, state.InvalidGraph, state.InvalidProtobuf, state.NoSuchFile


class OnnxModel:
    """A generation graph (``codes`` int32 [B, L] -> ``images`` uint8 [B, H, W, C]) in ONNX Runtime.

    ``batch_size`` caps the rows per session call; the entry's max batch size
    (what the graph was exported and verified for) caps it too.
    """

    def __init__(self, onnx_path: str | Path, entry_dir: str | Path | None = None,
                 batch_size: int | None = None, threads: int = 0):
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        self.description = read_description(Path(entry_dir) if entry_dir else self.path.resolve().parent.parent)
        if self.layout.graph != "generate":
            raise RepositoryError(f"{self.path} is the {self.layout.graph!r} graph; ddn-generate needs the "
                                  "generation graph (the entry named after the model, without a suffix)")
        self.max_batch_size = self.description.max_batch_size
        self.batch_size = min(batch_size or self.max_batch_size, self.max_batch_size)
        try:
            self.session = onnxruntime_session(self.path, threads)
        except _onnxruntime_errors() as exc:
            raise RepositoryError(f"cannot load {self.path} as an ONNX model: {' '.join(str(exc).split())}") from None
        self.output_names = [o.name for o in self.session.get_outputs()]

    @classmethod
    def from_repository(cls, repository: str | Path, model: str, version: str | None = None,
                        batch_size: int | None = None, threads: int = 0) -> OnnxModel:
        entry_dir = Path(repository) / model
        folder = entry_dir / version if version else latest_version(entry_dir)
        return cls(folder / ONNX_FILE, entry_dir, batch_size, threads)

    @property
    def layout(self) -> GraphLayout:
        return self.description.layout

    def codes_for_seeds(self, seeds: int | Sequence[int]) -> np.ndarray:
        return codes_from_seed(seeds, self.layout.num_layers, self.layout.branch_counts)

    def generate(self, seeds: int | Sequence[int] | None = None, codes: np.ndarray | None = None,
                 output: str = "images") -> np.ndarray:
        """Same contract as :meth:`DDNClient.generate`: uint8 [B, H, W, C] for seeds or checked codes."""
        if (seeds is None) == (codes is None):
            raise ValueError("generate() takes exactly one of seeds or codes")
        codes = self.codes_for_seeds(seeds) if seeds is not None else validate_codes(
            codes, self.layout.num_layers, self.layout.branch_counts)
        if output not in self.output_names:
            raise ValueError(f"{self.path} has no output {output!r}; its outputs are {self.output_names}")
        if len(codes) == 0:  # the graph's reshapes cannot take an empty batch
            spec = next(s for s in self.description.outputs if s.name == output)
            return np.zeros((0, *spec.shape), spec.dtype)
        step = self.batch_size
        try:
            return np.concatenate([self.session.run([output], {"codes": codes[i:i + step]})[0]
                                   for i in range(0, len(codes), step)])
        except _onnxruntime_errors() as exc:
            raise RuntimeError(f"{self.path}: {' '.join(str(exc).split())}") from None

    def close(self) -> None:
        """Release the session (its memory and threads)."""
        self.session = None
