"""Freeze a graph to ONNX and prove the file computes what the PyTorch model computes.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript).
The TorchScript exporter cannot trace the generator (``F.interpolate`` with a
scale factor inside ``area_resize`` fails in its upsample symbolic), while
torch.export captures the whole walk as one static graph with a symbolic batch
dimension and onnxscript's optimizer folds the constants. Opset 18: the oldest
that ONNX Runtime, TensorRT 10 and Triton's onnxruntime backend all run and
that the exporter supports without down-conversion.

Verification (:func:`verify_onnx`): ``onnx.checker`` (full check, with shape
inference), then ONNX Runtime against the PyTorch graph module on inputs at
several batch sizes, none of them the export example's. uint8 outputs may
differ by one level (rounding of float results that differ in the last bits),
int32 outputs (codes) must be equal, float outputs within ``float_atol``.
"""
from __future__ import annotations

import collections
import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ddn.repository_contract import onnxruntime_session

from .graphs import GeneratorGraph

OPSET = 18
EXPORT_BATCH = 2  # the example batch; 0 and 1 would be specialised by torch.export
VERIFY_BATCHES = (1, 5)


class VerificationError(RuntimeError):
    """An exported graph that does not compute what the PyTorch model computes."""


def export_onnx(graph: GeneratorGraph, path: Path, max_batch: int, seed: int = 0) -> None:
    """Write ``graph`` as a self-contained ONNX file (weights inside) with a dynamic batch axis."""
    rng = np.random.default_rng(seed)
    example = tuple(torch.from_numpy(x) for x in graph.example_inputs(EXPORT_BATCH, rng))
    batch = torch.export.Dim("batch", min=1, max=max(max_batch, EXPORT_BATCH))
    names = [spec.name for spec in graph.inputs()]
    quiet = io.StringIO()
    # The exporter reports progress on stdout and missing optional packages
    # (torchvision) through logging; neither is useful to a ddn-export user.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(quiet), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", (FutureWarning, UserWarning, DeprecationWarning))
            torch.onnx.export(
                graph.eval(), example, str(path), dynamo=True, opset_version=OPSET, external_data=False,
                input_names=names, output_names=[spec.name for spec in graph.outputs()],
                dynamic_shapes=graph.dynamic_shapes(batch),
                verbose=False)
    finally:
        logger.setLevel(level)


def operator_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Op type -> number of nodes in the main graph, most frequent first."""
    counts = collections.Counter(node.op_type for node in model.graph.node)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def torch_outputs(graph: GeneratorGraph, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """The PyTorch graph module's outputs by name (the reference the exported file must match)."""
    with torch.no_grad():
        results = graph(*(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs))
    results = results if isinstance(results, tuple) else (results,)
    return {spec.name: r.numpy() for spec, r in zip(graph.outputs(), results)}


def compare_outputs(reference: dict[str, np.ndarray], actual: dict[str, np.ndarray], float_atol: float,
                    uint8_levels: int = 1) -> dict[str, float]:
    """Max abs difference per output; raises VerificationError if one is over its tolerance."""
    errors: dict[str, float] = {}
    for name, want in reference.items():
        got = actual[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise VerificationError(f"output {name!r} is {got.dtype}{list(got.shape)}, "
                                    f"expected {want.dtype}{list(want.shape)}")
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        error = float(diff.max()) if diff.size else 0.0
        errors[name] = error
        if want.dtype == np.uint8:
            limit = uint8_levels
        elif np.issubdtype(want.dtype, np.integer):
            limit = 0
        else:
            limit = float_atol
        if error > limit:
            where = np.unravel_index(int(diff.argmax()), diff.shape)
            raise VerificationError(f"output {name!r} differs by {error:g} (limit {limit:g}) at index "
                                    f"{list(map(int, where))}: expected {want[where]}, got {got[where]}")
    return errors


def verify_onnx(graph: GeneratorGraph, path: Path, batches: Sequence[int] = VERIFY_BATCHES, float_atol: float = 1e-4,
                seed: int = 1) -> dict:
    """Check ``path`` and compare ONNX Runtime with PyTorch; returns the report stored in ddn.json.

    Raises VerificationError (or onnx.checker's ValidationError) on any mismatch.
    """
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    expected_io = ([s.name for s in graph.inputs()], [s.name for s in graph.outputs()])
    actual_io = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if actual_io != expected_io:
        raise VerificationError(f"graph io is {actual_io}, expected {expected_io}")
    session = onnxruntime_session(path)
    rng = np.random.default_rng(seed)
    max_errors: dict[str, float] = {}
    for batch in batches:
        inputs = graph.example_inputs(batch, rng)
        reference = torch_outputs(graph, inputs)
        names = [spec.name for spec in graph.inputs()]
        results = session.run(list(reference), dict(zip(names, inputs)))
        errors = compare_outputs(reference, dict(zip(reference, results)), float_atol)
        for name, error in errors.items():
            max_errors[name] = max(error, max_errors.get(name, 0.0))
    return {"checker": "ok", "backend": f"onnxruntime {ort.__version__}", "batch_sizes": list(batches),
            "max_abs_error": max_errors, "operators": operator_counts(model)}
