"""config.pbtxt for the entries ``ddn-export`` writes, as ``model_config_pb2`` messages in text format, the schema
readers parse them with: the ONNX Runtime, python-twin and TensorRT graph entries share one io description and
``ddn_*`` parameters; the seed step and ensembles have their own (docs/export.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from ddn.repository_contract import CONFIG_FILE, TensorSpec

TRITON_TYPES = {np.dtype(np.uint8): pb.TYPE_UINT8, np.dtype(np.int32): pb.TYPE_INT32,
                np.dtype(np.int64): pb.TYPE_INT64, np.dtype(np.float32): pb.TYPE_FP32}
INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU", "auto": "KIND_AUTO"}
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan", "python": None}
MAX_QUEUE_DELAY_US = 500
WARMUP_NAME = "zeros_batch_1"


def preferred_batch_sizes(max_batch: int) -> list[int]:
    """A quarter of the maximum and the maximum: sizes the scheduler waits to form."""
    return sorted({max(1, max_batch // 4), max_batch})


def _add_tensors(field, specs: Sequence[TensorSpec]) -> None:
    for spec in specs:
        field.add(name=spec.name, data_type=TRITON_TYPES[spec.dtype], dims=spec.shape)


def _set_parameters(config: pb.ModelConfig, parameters: Mapping[str, str]) -> None:
    for key, value in parameters.items():
        config.parameters[key].string_value = value


def graph_config(*, name: str | None, backend: str, max_batch: int, inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec], parameters: Mapping[str, str], instance_kind: str) -> pb.ModelConfig:
    """The config of a graph entry. ``backend`` is a key of PLATFORMS; ``name`` None leaves it out."""
    config = pb.ModelConfig(name=name or "", platform=PLATFORMS[backend] or "", backend=backend,
                            max_batch_size=max_batch)
    config.version_policy.latest.num_versions = 1
    _add_tensors(config.input, inputs)
    _add_tensors(config.output, outputs)
    config.dynamic_batching.preferred_batch_size.extend(preferred_batch_sizes(max_batch))
    config.dynamic_batching.max_queue_delay_microseconds = MAX_QUEUE_DELAY_US
    config.instance_group.add(kind=pb.ModelInstanceGroup.Kind.Value(instance_kind), count=1)
    warmup = config.model_warmup.add(name=WARMUP_NAME, batch_size=1)
    for spec in inputs:
        warmup.inputs[spec.name].CopyFrom(pb.ModelWarmup.Input(data_type=TRITON_TYPES[spec.dtype], dims=spec.shape,
                                                                zero_data=True))
    _set_parameters(config, parameters)
    return config


def ensemble_config(*, name: str, max_batch: int, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                    steps: Sequence[tuple[str, Mapping[str, str], Mapping[str, str]]],
                    parameters: Mapping[str, str]) -> pb.ModelConfig:
    """The config of a Triton ensemble; ``steps`` are (model, input_map, output_map) run in order, each map the step's
    tensor name -> the ensemble's. Each step's model does its own batching.
    """
    config = pb.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch)
    _add_tensors(config.input, inputs)
    _add_tensors(config.output, outputs)
    for model, input_map, output_map in steps:
        config.ensemble_scheduling.step.add(model_name=model, model_version=-1, input_map=input_map,
                                            output_map=output_map)
    _set_parameters(config, parameters)
    return config


def config_text(config: pb.ModelConfig, comment: str) -> str:
    """config.pbtxt's text: ``comment`` as ``#`` lines, then the message in protobuf text format."""
    header = "".join(f"# {line}".rstrip() + "\n" for line in comment.strip().splitlines())
    return header + text_format.MessageToString(config, use_short_repeated_primitives=True)


def write_config(folder: Path, config: pb.ModelConfig, comment: str) -> None:
    """Write ``folder/config.pbtxt`` (a staged entry: the repository sees it only once the entry is committed)."""
    (folder / CONFIG_FILE).write_text(config_text(config, comment))
