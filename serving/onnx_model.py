"""Exported DDN graphs run in this process by ONNX Runtime (no server).

:class:`OnnxModel` offers what :class:`ddn.serving.client.DDNClient` offers
(``layout``, ``codes_for_seeds``, ``generate``, ``conditional``), so the batch
CLI and the benchmarks treat a local repository and a Triton server alike, and
the same seed or condition gives the same pixels through either.

Each entry's layout (L, K per layer, image shape) and batch limit come from its
``ddn.json`` (:func:`ddn.repository_contract.read_description`): for
``<repo>/<G>/<version>/model.onnx`` that is ``<repo>/<G>/ddn.json``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ddn.codes import codes_from_seed, validate_codes
from ddn.conditions import condition_spec
from ddn.repository_contract import (DESCRIPTION_FILE, ONNX_FILE, PYTHON_SUFFIX, TRT_SUFFIX, EntryDescription,
                                     GraphLayout, RepositoryError, entry_name, latest_version, onnxruntime_session,
                                     read_description)


def _onnxruntime_errors() -> tuple[type[Exception], ...]:
    """What ONNX Runtime raises for a file it cannot load or run (none of them is a RuntimeError)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return state.Fail, state.InvalidArgument, state.InvalidGraph, state.InvalidProtobuf, state.NoSuchFile


def generation_models(repository: str | Path) -> list[str]:
    """The models of a repository: its generation entries by name (what ``--model`` takes), without the
    python twins and TensorRT entries of the same graph."""
    folders = sorted(p for p in Path(repository).iterdir() if (p / DESCRIPTION_FILE).is_file()) \
        if Path(repository).is_dir() else []
    entries = {p.name for p in folders if _graph_of(p) == "generate"}
    return sorted(name for name in entries
                  if not any(name.endswith(suffix) and name[:-len(suffix)] in entries
                             for suffix in (PYTHON_SUFFIX, TRT_SUFFIX)))


def _graph_of(entry_dir: Path) -> str | None:
    try:
        return read_description(entry_dir).layout.graph
    except RepositoryError:
        return None


def check_generation_graph(layout: GraphLayout, entry: str, where: str) -> None:
    """RepositoryError unless ``layout`` is a generation graph: images come from codes only there."""
    if layout.graph == "generate":
        return
    suffix = f"_{layout.graph}"
    model = entry.split(suffix)[0] if suffix in entry else None
    fix = f"--model {model}" if model else "the entry named after the model, without a suffix"
    raise RepositoryError(f"{where} is the {layout.graph!r} graph, not a generation graph; ddn-generate generates "
                          f"from a model's generation entry: {fix}")


class OnnxGraph:
    """One entry's graph in an ONNX Runtime session, run in chunks of at most ``batch_size`` rows.

    ``batch_size`` is capped by the entry's max batch size (what the graph was
    exported and verified for).
    """

    def __init__(self, onnx_path: str | Path, entry_dir: str | Path | None = None,
                 batch_size: int | None = None, threads: int = 0):
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        self.entry_dir = Path(entry_dir) if entry_dir else self.path.resolve().parent.parent
        self.description = read_description(self.entry_dir)
        self.max_batch_size = self.description.max_batch_size
        self.batch_size = min(batch_size or self.max_batch_size, self.max_batch_size)
        try:
            self.session = onnxruntime_session(self.path, threads)
        except _onnxruntime_errors() as exc:
            raise RepositoryError(f"cannot load {self.path} as an ONNX model: {' '.join(str(exc).split())}") from None
        self.output_names = [o.name for o in self.session.get_outputs()]

    @classmethod
    def from_entry(cls, entry_dir: str | Path, version: str | None = None, batch_size: int | None = None,
                   threads: int = 0) -> OnnxGraph:
        """The entry's given version, or its latest."""
        entry_dir = Path(entry_dir)
        folder = entry_dir / version if version else latest_version(entry_dir)
        return cls(folder / ONNX_FILE, entry_dir, batch_size, threads)

    @property
    def layout(self) -> GraphLayout:
        return self.description.layout

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """``outputs`` by name for batched ``inputs`` of any size (already checked by the caller)."""
        unknown = [name for name in outputs if name not in self.output_names]
        if unknown:
            raise ValueError(f"{self.path} has no output {unknown[0]!r}; its outputs are {self.output_names}")
        batch = len(next(iter(inputs.values())))
        if batch == 0:  # the graph's reshapes cannot take an empty batch
            return {s.name: np.zeros((0, *s.shape), s.dtype) for s in self.description.outputs if s.name in outputs}
        step = self.batch_size
        try:
            parts = [self.session.run(list(outputs), {name: x[i:i + step] for name, x in inputs.items()})
                     for i in range(0, batch, step)]
        except _onnxruntime_errors() as exc:
            raise RuntimeError(f"{self.path}: {' '.join(str(exc).split())}") from None
        return {name: np.concatenate([part[j] for part in parts]) for j, name in enumerate(outputs)}

    def close(self) -> None:
        """Release the session (its memory and threads)."""
        self.session = None


class OnnxModel:
    """A model's generation graph (``codes`` int32 [B, L] -> ``images`` uint8 [B, H, W, C]) in ONNX Runtime.

    Its condition graphs (``<model>_<condition>`` beside the generation entry)
    are opened on first use by :meth:`conditional`, with the same batch size
    and threads.
    """

    def __init__(self, onnx_path: str | Path, entry_dir: str | Path | None = None,
                 batch_size: int | None = None, threads: int = 0):
        self.graph = OnnxGraph(onnx_path, entry_dir, batch_size, threads)
        check_generation_graph(self.layout, self.graph.entry_dir.name, str(self.path))
        self._requested_batch_size, self._threads = batch_size, threads
        self._conditions: dict[str, OnnxGraph] = {}

    @classmethod
    def from_repository(cls, repository: str | Path, model: str, version: str | None = None,
                        batch_size: int | None = None, threads: int = 0) -> OnnxModel:
        entry_dir = Path(repository) / model
        if not (entry_dir / DESCRIPTION_FILE).is_file():
            raise RepositoryError(f"{repository} has no model {model!r}; its models: "
                                  f"{', '.join(generation_models(repository)) or '(none: export one with ddn-export)'}")
        folder = entry_dir / version if version else latest_version(entry_dir)
        return cls(folder / ONNX_FILE, entry_dir, batch_size, threads)

    @property
    def path(self) -> Path:
        return self.graph.path

    @property
    def description(self) -> EntryDescription:
        return self.graph.description

    @property
    def layout(self) -> GraphLayout:
        return self.graph.layout

    @property
    def max_batch_size(self) -> int:
        return self.graph.max_batch_size

    @property
    def batch_size(self) -> int:
        return self.graph.batch_size

    def codes_for_seeds(self, seeds: int | Sequence[int]) -> np.ndarray:
        return codes_from_seed(seeds, self.layout.num_layers, self.layout.branch_counts)

    def generate(self, seeds: int | Sequence[int] | None = None, codes: np.ndarray | None = None,
                 output: str = "images") -> np.ndarray:
        """Same contract as :meth:`DDNClient.generate`: uint8 [B, H, W, C] for seeds or checked codes."""
        if (seeds is None) == (codes is None):
            raise ValueError("generate() takes exactly one of seeds or codes")
        codes = self.codes_for_seeds(seeds) if seeds is not None else validate_codes(
            codes, self.layout.num_layers, self.layout.branch_counts)
        return self.graph.run({"codes": codes}, [output])[output]

    def condition_graph(self, kind: str) -> OnnxGraph:
        """The entry ``<model>_<kind>`` beside the generation entry (opened once)."""
        if kind not in self._conditions:
            entry_dir, version = self.graph.entry_dir, self.graph.path.parent.name
            # ddn-export writes every graph of a model under one version: the generation graph's, if it has one.
            self._conditions[kind] = OnnxGraph.from_entry(entry_dir.parent / entry_name(entry_dir.name, kind),
                                                          version if version.isdigit() else None,
                                                          self._requested_batch_size, self._threads)
        return self._conditions[kind]

    def condition_layout(self, kind: str) -> GraphLayout:
        """The layout of condition ``kind``'s graph (its input shapes follow from it)."""
        return self.condition_graph(kind).layout

    def conditional(self, kind: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Same contract as :meth:`DDNClient.conditional`: ``images`` and ``codes`` of the top-1 path."""
        spec = condition_spec(kind)
        graph = self.condition_graph(kind)
        arrays = spec.check(graph.layout, inputs)
        return graph.run(arrays, graph.output_names)

    def close(self) -> None:
        """Release the sessions (their memory and threads)."""
        for graph in (self.graph, *self._conditions.values()):
            graph.close()
