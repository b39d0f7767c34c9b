"""KServe v2 JSON inference bodies, checked against the model's config, to and from Triton's gRPC messages.

The HTTP gateway (:mod:`ddn.serving.http_gateway`) turns a JSON request into
a gRPC ``ModelInferRequest`` only once every input's name, datatype and shape
agree with the model's config and the shape holds exactly the values sent:
a declared shape never sizes anything before the data that fills it is here.
Only the JSON form is spoken (no binary tensor extension). The answer is
written as Triton's HTTP frontend writes it, so a curl user sees the same JSON.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2, service_pb2

# KServe datatype -> numpy dtype (BYTES and BF16 have none: models here never take them).
NUMPY_TYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
               "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
               "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}


class BadRequest(ValueError):
    """A request the gateway refuses before it reaches the server (HTTP 400 with this message)."""


def datatype(config_type: int) -> str:
    """The KServe datatype name of a model config ``TYPE_*`` value (``TYPE_FP32`` -> ``FP32``)."""
    name = model_config_pb2.DataType.Name(config_type).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def _expected_shape(tensor: model_config_pb2.ModelInput, max_batch_size: int) -> list[int]:
    """The config's dims with the batch dimension in front when the model batches (-1: any size)."""
    return ([-1] if max_batch_size > 0 else []) + list(tensor.dims)


def _check_shape(name: str, shape: Any, expected: list[int], max_batch_size: int) -> list[int]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise BadRequest(f"input '{name}': shape must be a list of integers")
    fits = len(shape) == len(expected) and all(d >= 0 and e in (-1, d) for d, e in zip(shape, expected))
    if not fits:
        raise BadRequest(f"input '{name}': unexpected shape {shape}, the model takes {expected}")
    if max_batch_size > 0 and not 1 <= shape[0] <= max_batch_size:
        raise BadRequest(f"input '{name}': batch size {shape[0]} is not in 1..{max_batch_size}")
    return shape


def _values(name: str, data: Any, kind: str, shape: list[int]) -> np.ndarray:
    """``data`` (flat or nested lists, row-major) as an array of ``kind`` shaped ``shape``."""
    if not isinstance(data, list):
        raise BadRequest(f"input '{name}': data must be a JSON array")
    try:
        values = np.array(data)
    except ValueError:  # ragged nesting
        raise BadRequest(f"input '{name}': data is not a regular array") from None
    count = math.prod(shape)  # Python integers: a huge declared shape cannot overflow here
    if values.size != count:
        raise BadRequest(f"input '{name}': shape {shape} holds {count} values, data has {values.size}")
    target = np.dtype(NUMPY_TYPES[kind])
    allowed = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}[target.kind]
    if values.size and values.dtype.kind not in allowed:
        raise BadRequest(f"input '{name}': data must be {kind} values")
    if values.size and target.kind in "iu":
        limits = np.iinfo(target)
        if values.min() < limits.min or values.max() > limits.max:
            raise BadRequest(f"input '{name}': a value is out of the {kind} range")
    return values.astype(target).reshape(shape)


def _no_binary(parameters: Any, where: str, key: str) -> None:
    if parameters is not None and not isinstance(parameters, dict):
        raise BadRequest(f"{where}: parameters must be a JSON object")
    if parameters and parameters.get(key):
        raise BadRequest(f"{where}: binary tensor data is not served here; ask for JSON data")


def infer_request(model: str, version: str, body: Any,
                  config: model_config_pb2.ModelConfig) -> service_pb2.ModelInferRequest:
    """The gRPC request for JSON ``body``, or BadRequest naming the first thing that does not fit ``config``."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise BadRequest("the request must be a JSON object with an 'inputs' array")
    _no_binary(body.get("parameters"), "request", "binary_data_output")
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    if "id" in body:
        if not isinstance(body["id"], str):
            raise BadRequest("request id must be a string")
        request.id = body["id"]
    declared = {tensor.name: tensor for tensor in config.input}
    seen: set[str] = set()
    for tensor in body["inputs"]:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise BadRequest("each input must be a JSON object with a 'name'")
        name = tensor["name"]
        if name not in declared or name in seen:
            raise BadRequest(f"unexpected input '{name}': the model takes {sorted(declared)}, each once")
        seen.add(name)
        _no_binary(tensor.get("parameters"), f"input '{name}'", "binary_data_size")
        kind = datatype(declared[name].data_type)
        if tensor.get("datatype") != kind or kind not in NUMPY_TYPES:
            raise BadRequest(f"input '{name}': datatype must be {kind}, got {tensor.get('datatype')!r}")
        shape = _check_shape(name, tensor.get("shape"), _expected_shape(declared[name], config.max_batch_size),
                             config.max_batch_size)
        values = _values(name, tensor.get("data"), kind, shape)
        sent = request.inputs.add(name=name, datatype=kind)
        sent.shape.extend(shape)
        request.raw_input_contents.append(values.tobytes())
    missing = sorted(name for name, tensor in declared.items() if name not in seen and not tensor.optional)
    if missing:
        raise BadRequest(f"missing inputs {missing}")
    _requested_outputs(body.get("outputs"), {tensor.name for tensor in config.output}, request)
    return request


def _requested_outputs(outputs: Any, declared: set[str], request: service_pb2.ModelInferRequest) -> None:
    if outputs is None:
        return
    if not isinstance(outputs, list):
        raise BadRequest("'outputs' must be a JSON array")
    for output in outputs:
        if not isinstance(output, dict) or output.get("name") not in declared:
            raise BadRequest(f"each requested output must name one of {sorted(declared)}")
        _no_binary(output.get("parameters"), f"output '{output['name']}'", "binary_data")
        request.outputs.add(name=output["name"])


def infer_response(response: service_pb2.ModelInferResponse) -> dict[str, Any]:
    """Triton's HTTP JSON answer for a gRPC inference response."""
    outputs = []
    for tensor, raw in zip(response.outputs, response.raw_output_contents):
        values = np.frombuffer(raw, NUMPY_TYPES[tensor.datatype])
        outputs.append({"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
                        "data": values.tolist()})
    answer: dict[str, Any] = {"id": response.id} if response.id else {}
    answer.update(model_name=response.model_name, model_version=response.model_version, outputs=outputs)
    return answer
