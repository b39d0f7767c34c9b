"""config.pbtxt for the Triton model repository entries ``ddn-export`` writes.

Three kinds of graph entry share one io description, dynamic batching, warmup and
``ddn_*`` parameters (:class:`ddn.repository_contract.GraphLayout`, so clients
can validate codes from the model config alone):

* ``G``         ONNX Runtime backend (``platform: onnxruntime_onnx``), GPU instances by default;
* ``G_python``  python backend running the same ONNX file with ONNX Runtime on the CPU,
  for servers without the onnxruntime backend; its config sets no ``name`` so a CPU
  view of the repository can serve it under the plain name ``G``;
* ``G_trt``     TensorRT engine (``platform: tensorrt_plan``), GPU only.

Instance kind of the ``G`` entries: ``KIND_GPU`` by default. Triton refuses to
load a KIND_GPU instance group where no GPU is visible (the model fails with
"has kind KIND_GPU but no GPUs are available", and with --exit-on-error the
server stops), so a CPU-only host either serves the ``G_python`` twins (what
``ddn-serve`` does) or exports with ``--instance-kind auto`` (Triton then uses
the GPUs if there are any and the CPU otherwise) or ``cpu``.

The generate-by-seed entries: ``G_seed_codes`` is a python-backend entry
(:func:`render_config`) and ``G_seeds`` an ensemble (:func:`render_ensemble_config`).
"""
from __future__ import annotations

import json
from typing import Mapping, Sequence

import numpy as np

from ddn.repository_contract import TensorSpec

TRITON_TYPES = {np.dtype(np.uint8): "TYPE_UINT8", np.dtype(np.int32): "TYPE_INT32", np.dtype(np.int64): "TYPE_INT64",
                np.dtype(np.float32): "TYPE_FP32"}
INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU", "auto": "KIND_AUTO"}
MAX_QUEUE_DELAY_US = 500


def _quote(text: str) -> str:
    """A protobuf text-format string literal (ASCII; json's escapes are valid there)."""
    return json.dumps(str(text), ensure_ascii=True)


def _dims(shape: Sequence[int]) -> str:
    return "[ " + ", ".join(str(int(d)) for d in shape) + " ]"


def _tensors(specs: Sequence[TensorSpec]) -> str:
    rows = [f"  {{ name: {_quote(s.name)} data_type: {TRITON_TYPES[s.dtype]} dims: {_dims(s.shape)} }}" for s in specs]
    return "[\n" + ",\n".join(rows) + "\n]"


def preferred_batch_sizes(max_batch: int) -> list[int]:
    """A quarter of the maximum and the maximum: sizes the scheduler waits to form."""
    return sorted({max(1, max_batch // 4), max_batch})


def _header(comment: str, name: str | None) -> list[str]:
    lines = [f"# {line}".rstrip() for line in comment.strip().splitlines()]
    return lines + ([f"name: {_quote(name)}"] if name is not None else [])


def _parameters(parameters: Mapping[str, str]) -> list[str]:
    return [f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}"
            for key, value in parameters.items()]


def render_config(*, name: str | None, backend: str, max_batch: int, inputs: Sequence[TensorSpec],
                  outputs: Sequence[TensorSpec], parameters: Mapping[str, str], instance_kind: str,
                  comment: str) -> str:
    """config.pbtxt text. ``backend`` is "onnxruntime", "python" or "tensorrt"; ``name`` None leaves it out."""
    platform = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan", "python": None}[backend]
    lines = _header(comment, name)
    if platform is not None:
        lines.append(f"platform: {_quote(platform)}")
    lines += [
        f"backend: {_quote(backend)}",
        f"max_batch_size: {int(max_batch)}",
        "version_policy: { latest: { num_versions: 1 } }",
        f"input {_tensors(inputs)}",
        f"output {_tensors(outputs)}",
        "dynamic_batching {",
        f"  preferred_batch_size: {_dims(preferred_batch_sizes(max_batch))}",
        f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}",
        "}",
        f"instance_group [ {{ kind: {instance_kind} count: 1 }} ]",
        "model_warmup [",
        "  {",
        '    name: "zeros_batch_1"',
        "    batch_size: 1",
    ]
    for s in inputs:
        lines.append(f"    inputs {{ key: {_quote(s.name)} value: {{ data_type: {TRITON_TYPES[s.dtype]} "
                     f"dims: {_dims(s.shape)} zero_data: true }} }}")
    lines += ["  }", "]", *_parameters(parameters)]
    return "\n".join(lines) + "\n"


def render_ensemble_config(*, name: str, max_batch: int, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                           steps: Sequence[tuple[str, Mapping[str, str], Mapping[str, str]]],
                           parameters: Mapping[str, str], comment: str) -> str:
    """config.pbtxt of a Triton ensemble: ``steps`` are (model, input_map, output_map), run in order.

    Each map is the step model's tensor name -> the ensemble's tensor name. An
    ensemble has no batching or instances of its own: each step's model queues
    and batches the requests that reach it.
    """
    lines = [*_header(comment, name), 'platform: "ensemble"', f"max_batch_size: {int(max_batch)}",
             f"input {_tensors(inputs)}", f"output {_tensors(outputs)}", "ensemble_scheduling {", "  step ["]
    rows = []
    for model, input_map, output_map in steps:
        maps = [f"input_map {{ key: {_quote(k)} value: {_quote(v)} }}" for k, v in input_map.items()]
        maps += [f"output_map {{ key: {_quote(k)} value: {_quote(v)} }}" for k, v in output_map.items()]
        rows.append(f"    {{ model_name: {_quote(model)} model_version: -1 " + " ".join(maps) + " }")
    lines += [",\n".join(rows), "  ]", "}", *_parameters(parameters)]
    return "\n".join(lines) + "\n"
