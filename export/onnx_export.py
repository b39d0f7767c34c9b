"""Freeze a graph to ONNX with torch.export (dynamo) at opset 18 and prove that the file computes what the PyTorch
model computes, on ONNX Runtime at batch sizes other than the export example's (why this exporter and opset, and the
tolerances: docs/export.md).
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
from onnx import numpy_helper

from ddn.repository_contract import onnxruntime_session

from .graphs import GeneratorGraph

OPSET = 18  # the oldest that ONNX Runtime, TensorRT 10 and Triton's onnxruntime backend all run
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
            # dynamo: the TorchScript exporter cannot trace area_resize's F.interpolate by scale factor
            torch.onnx.export(
                graph.eval(), example, str(path), dynamo=True, opset_version=OPSET, external_data=False,
                input_names=names, output_names=[spec.name for spec in graph.outputs()],
                dynamic_shapes=graph.dynamic_shapes(batch),
                verbose=False)
    finally:
        logger.setLevel(level)
    model = onnx.load(str(path))
    static_reshapes(model)
    _write_atomically(model, path)


def _write_atomically(model: onnx.ModelProto, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    onnx.save(model, str(partial))
    partial.replace(path)


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Value name -> dims (int when static, the symbol's name when dynamic, None when unknown)."""
    shapes = {}
    for info in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        dims = info.type.tensor_type.shape.dim
        if info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    return shapes


def static_reshapes(model: onnx.ModelProto) -> None:
    """Replace shape bookkeeping the static layout does not need, in place: a Reshape to ``Shape(x)`` gets a constant
    shape, one to its input's own shape is dropped, since each node is a kernel launch.
    """
    shapes = _shapes(model)
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    graph_outputs = {o.name for o in model.graph.output}
    renamed: dict[str, str] = {}
    kept = []
    for node in model.graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        if node.op_type == "Reshape":
            source = producers.get(node.input[1])
            if source is not None and _is_full_shape(source):
                static = _batch_only_dynamic(shapes.get(source.input[0]))
                if static is not None:
                    node.input[1] = f"{node.output[0]}_shape"
                    constants[node.input[1]] = np.array(static, np.int64)
                    model.graph.initializer.append(numpy_helper.from_array(constants[node.input[1]], node.input[1]))
            target = constants.get(node.input[1])
            if target is not None and node.output[0] not in graph_outputs \
                    and list(target) == _batch_only_dynamic(shapes.get(node.input[0])):
                renamed[node.output[0]] = node.input[0]
                continue
        kept.append(node)
    live = _live_nodes(kept, graph_outputs)
    del model.graph.node[:]
    model.graph.node.extend(live)
    used = {name for node in model.graph.node for name in node.input}
    _keep(model.graph.initializer, lambda tensor: tensor.name in used)
    produced = {out for node in model.graph.node for out in node.output}
    _keep(model.graph.value_info, lambda info: info.name in produced)


def _is_full_shape(node: onnx.NodeProto) -> bool:
    """A Shape node that returns every dimension (start 0, no end)."""
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return node.op_type == "Shape" and attributes.get("start", 0) == 0 and "end" not in attributes


def _batch_only_dynamic(dims: list[int | str | None] | None) -> list[int] | None:
    """[-1, d1, ..., dn] for a shape whose only dynamic dimension is the first, else None."""
    if not dims or not all(isinstance(d, int) for d in dims[1:]):
        return None
    return [-1, *dims[1:]]


def _keep(field, wanted) -> None:
    """Keep the items of a repeated protobuf field for which ``wanted`` holds (in order)."""
    items = [item for item in field if wanted(item)]
    del field[:]
    field.extend(items)


def _live_nodes(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` (in order) without those whose results nothing uses."""
    needed, live = set(outputs), []
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            live.append(node)
            needed.update(node.input)
    return live[::-1]


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
