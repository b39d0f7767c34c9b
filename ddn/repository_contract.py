"""What an entry of a ``ddn-export`` model repository holds (config.pbtxt, ddn.json, versioned model file) and how
entries are named: the one contract its writer and readers share (layout: docs/export.md). numpy only, ONNX Runtime
when a session is opened, so Triton clients import it without torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ddn.codes import OUT_OF_RANGE_CODES, SEED_RULE
from ddn.conditions import CONDITIONS

if TYPE_CHECKING:
    import onnxruntime

# Generation, encoding, and one guided graph per zero-shot condition (named as in the condition registry).
GRAPH_KINDS = ("generate", "encode", *CONDITIONS)
# Generation by seed: the ensemble NAME_seeds takes SEEDS_INPUT INT64 [B, 1] and runs the python step
# NAME_seed_codes (seeds -> codes by ddn.codes.codes_from_seed) then the generation entry.
SEEDS_KIND = "seeds"
SEED_CODES_KIND = "seed_codes"
PYTHON_SUFFIX = "_python"
TRT_SUFFIX = "_trt"
CONFIG_FILE = "config.pbtxt"
DESCRIPTION_FILE = "ddn.json"
ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
PYTHON_MODEL_FILE = "model.py"
FORMAT = "ddn-export/1"
# Config parameter with the sha256 of the entry's model.onnx (a TensorRT entry: of the graph it was built from).
# With the layout's parameters it identifies what an entry computes: two servers whose ddn_* parameters agree
# run the same graph and give the same bytes.
ONNX_DIGEST_PARAMETER = "ddn_onnx_sha256"
IDENTITY_PREFIX = "ddn_"
# Config parameters of the python twin: ONNX Runtime threads per instance (0 = one per physical core)
# and its execution provider, a key of EXECUTION_PROVIDERS.
ORT_THREADS_PARAMETER = "ort_intra_op_threads"
ORT_PROVIDER_PARAMETER = "ort_execution_provider"
# Each choice's ONNX Runtime providers, fastest first; ORT places the nodes a provider cannot run on the next one.
EXECUTION_PROVIDERS = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}


class RepositoryError(ValueError):
    """A model repository or entry that is missing, malformed, or cannot be written as asked."""


def entry_name(model: str, kind: str, variant: str = "") -> str:
    """The entry of graph ``kind`` of ``model``; ``variant`` is a suffix such as TRT_SUFFIX."""
    return (model if kind == "generate" else f"{model}_{kind}") + variant


def identity_parameters(parameters: Mapping[str, str]) -> dict[str, str]:
    """The ``ddn_*`` parameters of a config, sorted: what must agree between servers of one model.

    Server tuning (ONNX Runtime threads, execution provider) is left out: it
    may differ from server to server without changing a result.
    """
    return {key: parameters[key] for key in sorted(parameters) if key.startswith(IDENTITY_PREFIX)}


def latest_version(entry_dir: Path) -> Path:
    """The highest numbered version folder of an entry."""
    versions = [p for p in entry_dir.iterdir() if p.is_dir() and p.name.isdigit()] if entry_dir.is_dir() else []
    if not versions:
        raise RepositoryError(f"no version folder (1/, 2/, ...) in {entry_dir}")
    return max(versions, key=lambda p: int(p.name))


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output; ``shape`` is per sample (the batch axis is implicit), -1 a free axis."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        """ddn.json's form: the shape includes the batch axis as -1."""
        return {"name": self.name, "dtype": self.dtype.name, "shape": [-1, *map(int, self.shape)]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(data["name"], np.dtype(data["dtype"]), tuple(int(d) for d in data["shape"][1:]))


# The seed entries' input: one seed per request row (numpy's default_rng takes seeds >= 0, INT64 carries < 2**63).
SEEDS_INPUT = TensorSpec("seeds", np.dtype(np.int64), (1,))


@dataclass(frozen=True)
class GraphLayout:
    """What a client needs to build and check requests: the graph, L, K per layer, the image shape.

    Written twice into every entry, as the config's ``ddn_*`` parameters (what a
    Triton client sees) and into ddn.json (what a local reader sees).
    """

    graph: str
    num_layers: int
    branch_counts: tuple[int, ...]
    image_size: int
    image_channels: int
    superres_factor: int | None = None  # the superres graph's low-res factor

    def __post_init__(self) -> None:
        if self.num_layers < 1 or len(self.branch_counts) != self.num_layers or min(self.branch_counts) < 1:
            raise RepositoryError(f"a layout needs L >= 1 layers with K >= 1 each, got L = {self.num_layers} "
                                  f"and K per layer {list(self.branch_counts)}")
        if self.image_size < 1 or self.image_channels < 1:
            raise RepositoryError(f"image size and channels must be >= 1, got {self.image_size} and "
                                  f"{self.image_channels}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.image_size, self.image_size, self.image_channels

    def parameters(self) -> dict[str, str]:
        """The ``ddn_*`` config parameters."""
        params = {
            "ddn_graph": self.graph,
            "ddn_num_layers": str(self.num_layers),
            "ddn_branch_counts": ",".join(str(int(k)) for k in self.branch_counts),
            "ddn_image_size": str(self.image_size),
            "ddn_image_channels": str(self.image_channels),
            "ddn_seed_rule": SEED_RULE,
            "ddn_out_of_range_codes": OUT_OF_RANGE_CODES,
        }
        if self.superres_factor is not None:
            params["ddn_superres_factor"] = str(self.superres_factor)
        return params

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> GraphLayout:
        """The layout in a config's parameters; RepositoryError naming a missing one."""
        missing = [key for key in ("ddn_graph", "ddn_num_layers", "ddn_branch_counts", "ddn_image_size",
                                   "ddn_image_channels") if key not in parameters]
        if missing:
            raise RepositoryError(f"no parameter {missing[0]!r} in its config; was it written by ddn-export?")
        factor = parameters.get("ddn_superres_factor")
        return cls(parameters["ddn_graph"], int(parameters["ddn_num_layers"]),
                   tuple(int(k) for k in parameters["ddn_branch_counts"].split(",")),
                   int(parameters["ddn_image_size"]), int(parameters["ddn_image_channels"]),
                   None if factor is None else int(factor))

    def to_json(self) -> dict[str, Any]:
        data = {"graph": self.graph, "num_layers": self.num_layers, "branch_counts": list(self.branch_counts),
                "image_size": self.image_size, "image_channels": self.image_channels,
                "image_shape": list(self.image_shape), "seed_rule": SEED_RULE,
                "out_of_range_codes": OUT_OF_RANGE_CODES}
        if self.superres_factor is not None:
            data["superres_factor"] = self.superres_factor
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GraphLayout:
        return cls(data["graph"], int(data["num_layers"]), tuple(int(k) for k in data["branch_counts"]),
                   int(data["image_size"]), int(data["image_channels"]), data.get("superres_factor"))


@dataclass(frozen=True)
class EntryDescription:
    """An entry's ddn.json: its layout, io and batch limit, plus ``details`` for people (provenance, checks)."""

    layout: GraphLayout
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise RepositoryError(f"max_batch_size must be >= 1, got {self.max_batch_size}")

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **self.layout.to_json(), "inputs": [s.to_json() for s in self.inputs],
                "outputs": [s.to_json() for s in self.outputs], "max_batch_size": self.max_batch_size,
                **self.details}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EntryDescription:
        layout = GraphLayout.from_json(data)
        read = {"format", "inputs", "outputs", "max_batch_size", *layout.to_json()}
        return cls(layout, tuple(map(TensorSpec.from_json, data["inputs"])),
                   tuple(map(TensorSpec.from_json, data["outputs"])), int(data["max_batch_size"]),
                   {key: value for key, value in data.items() if key not in read})


def write_description(entry_dir: Path, description: EntryDescription) -> None:
    (entry_dir / DESCRIPTION_FILE).write_text(json.dumps(description.to_json(), indent=2) + "\n")


def read_description(entry_dir: Path) -> EntryDescription:
    """The ddn.json of an entry; RepositoryError naming the file if it is missing or not ddn-export's."""
    path = entry_dir / DESCRIPTION_FILE
    if not path.is_file():
        raise RepositoryError(f"{path} not found: ddn-export writes it beside an entry's version folders")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RepositoryError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise RepositoryError(f"{path} is not a ddn-export description (format {found!r}, expected {FORMAT!r})")
    try:
        return EntryDescription.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise RepositoryError(f"{path} is incomplete or malformed: {type(exc).__name__}: {exc}") from None


def execution_providers(choice: str) -> tuple[str, ...]:
    """The providers of an EXECUTION_PROVIDERS choice; ValueError if this ONNX Runtime cannot run them.

    ONNX Runtime itself would fall back to the CPU silently; a twin asked for
    the GPU should fail its load instead, naming what is missing.
    """
    import onnxruntime as ort

    if choice not in EXECUTION_PROVIDERS:
        raise ValueError(f"{ORT_PROVIDER_PARAMETER} must be one of {sorted(EXECUTION_PROVIDERS)}, got {choice!r}")
    if choice != "cpu" and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu finds the CUDA and cuDNN libraries of the nvidia-* wheels only once
        # they are loaded; a process that has not imported torch has not loaded them.
        ort.preload_dlls()
    missing = [p for p in EXECUTION_PROVIDERS[choice] if p not in ort.get_available_providers()]
    if missing:
        raise ValueError(f"{ORT_PROVIDER_PARAMETER} {choice!r} needs {', '.join(missing)}, which this onnxruntime "
                         f"{ort.__version__} lacks (it has {', '.join(ort.get_available_providers())}); "
                         "on a GPU host install onnxruntime-gpu in place of onnxruntime")
    return EXECUTION_PROVIDERS[choice]


def onnxruntime_session(model: str | Path | bytes, threads: int = 0,
                        providers: Sequence[str] = EXECUTION_PROVIDERS["cpu"],
                        profile_prefix: Path | None = None) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session with every graph optimisation (``threads`` 0: ORT's default); everything that runs an
    exported graph opens it here, so a seed gives the same bytes everywhere. ``profile_prefix``: ORT's profiler on,
    its file written there by ``end_profiling()`` (benchmarks).
    """
    import onnxruntime as ort  # here, not above: a Triton client needs the names, not ONNX Runtime

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only
    if profile_prefix is not None:
        options.enable_profiling, options.profile_file_prefix = True, str(profile_prefix)
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=list(providers))
