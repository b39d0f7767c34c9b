"""The HTTP gateway's JSON checks, without a server: what reaches Triton is only what fits the model's config."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")

from tritonclient.grpc import model_config_pb2 as mc, service_pb2  # noqa: E402

from ddn.serving.json_infer import BadRequest, infer_request, infer_response  # noqa: E402

CONFIG = mc.ModelConfig(name="m", max_batch_size=4,
                        input=[mc.ModelInput(name="codes", data_type=mc.TYPE_INT32, dims=[3])],
                        output=[mc.ModelOutput(name="images", data_type=mc.TYPE_UINT8, dims=[2])])


def codes(**changes) -> dict:
    return {"inputs": [dict({"name": "codes", "shape": [2, 3], "datatype": "INT32", "data": [0, 1, 2, 3, 4, 5]},
                            **changes)]}


def test_a_valid_request_becomes_raw_tensors_flat_or_nested() -> None:
    for data in ([0, 1, 2, 3, 4, 5], [[0, 1, 2], [3, 4, 5]]):
        request = infer_request("m", "", dict(codes(data=data), id="r", outputs=[{"name": "images"}]), CONFIG)
        assert (request.id, list(request.inputs[0].shape), [o.name for o in request.outputs]) == ("r", [2, 3],
                                                                                                   ["images"])
        np.testing.assert_array_equal(np.frombuffer(request.raw_input_contents[0], np.int32), np.arange(6))


@pytest.mark.parametrize("body, message", [
    (codes(shape=[4294967296, 3]), "batch size 4294967296 is not in 1..4"),
    (codes(shape=[4294967296, 4]), r"unexpected shape \[4294967296, 4\], the model takes \[-1, 3\]"),
    (codes(shape=[1, 3]), r"shape \[1, 3\] holds 3 values, data has 6"),
    (codes(shape=[2, -3]), "unexpected shape"),
    (codes(shape=[2.0, 3]), "shape must be a list of integers"),
    (codes(datatype="FP32"), "datatype must be INT32, got 'FP32'"),
    (codes(data=[0, 1, 2, 3, 4, 2 ** 31]), "out of the INT32 range"),
    (codes(data=[0, 1, 2, 3, 4, 2 ** 70]), "data must be INT32 values"),
    (codes(data=[0, 1, 2, 3, 4, 5.5]), "data must be INT32 values"),
    (codes(data=[[0, 1, 2], [3, 4]]), "data is not a regular array"),
    (codes(data="012345"), "data must be a JSON array"),
    (codes(parameters={"binary_data_size": 24}), "binary tensor data is not served here"),
    (dict(codes(), outputs=[{"name": "images", "parameters": {"binary_data": True}}]), "binary tensor data"),
    (dict(codes(), outputs=[{"name": "secrets"}]), r"each requested output must name one of \['images'\]"),
    ({"inputs": []}, r"missing inputs \['codes'\]"),
    ({"inputs": codes()["inputs"] * 2}, "unexpected input 'codes'"),
    ([1, 2], "must be a JSON object with an 'inputs' array"),
])
def test_requests_that_do_not_fit_are_refused_naming_the_problem(body, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        infer_request("m", "", body, CONFIG)


def test_the_answer_is_written_as_triton_writes_it() -> None:
    response = service_pb2.ModelInferResponse(model_name="m", model_version="1", id="r")
    response.outputs.add(name="images", datatype="UINT8", shape=[1, 2])
    response.raw_output_contents.append(bytes([7, 255]))
    assert infer_response(response) == {"id": "r", "model_name": "m", "model_version": "1", "outputs": [
        {"name": "images", "datatype": "UINT8", "shape": [1, 2], "data": [7, 255]}]}
