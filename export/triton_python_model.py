"""Triton python-backend model: the exported ONNX graph run with ONNX Runtime on the CPU.

``ddn-export`` copies this file verbatim to ``<G>_python/<version>/model.py``.
The version folder also holds ``model.onnx``, a relative link to
``../../<G>/<version>/model.onnx`` (the production entry's file), so both
entries always run the same graph. Tensor names, dtypes and shapes come from
the model config, which Triton has already checked every request against.

Config parameter ``ort_intra_op_threads``: ONNX Runtime's thread count per
instance (0 = its default, one per physical core).
"""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(parameters.get("ort_intra_op_threads", "0"))
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]

    def execute(self, requests):
        # Dynamic batching hands over several requests at once: run them as one batch.
        try:
            feeds = [[pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names]
                     for request in requests]
            sizes = [arrays[0].shape[0] for arrays in feeds]
            batch = {name: np.concatenate([arrays[i] for arrays in feeds]) for i, name in enumerate(self.input_names)}
            results = self.session.run(self.output_names, batch)
        except Exception as exc:  # one line back to every client instead of a dead instance
            error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for request, size in zip(requests, sizes):
            wanted = set(request.requested_output_names()) or set(self.output_names)
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(result[start:start + size]))
                       for name, result in zip(self.output_names, results) if name in wanted]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def finalize(self):
        self.session = None
