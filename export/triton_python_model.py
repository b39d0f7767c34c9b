"""Triton python-backend model running the exported ONNX graph with ONNX Runtime (the ``<G>_python`` twin); its session
comes from :func:`ddn.repository_contract.onnxruntime_session`, so it runs ddn-generate's kernels. Parameters
``ort_intra_op_threads`` and ``ort_execution_provider``: docs/export.md. A :class:`~ddn.export.stall_guard.StallGuard`
stops the server rather than let an answer computed across a freeze reach the wrong batch.
"""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from ddn.export.stall_guard import StallGuard
from ddn.repository_contract import (ONNX_FILE, ORT_PROVIDER_PARAMETER, ORT_THREADS_PARAMETER, execution_providers,
                                     onnxruntime_session)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], ONNX_FILE)
        providers = execution_providers(parameters.get(ORT_PROVIDER_PARAMETER, "cpu"))
        self.session = onnxruntime_session(path, int(parameters.get(ORT_THREADS_PARAMETER, "0")), providers)
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        self.guard = StallGuard(args["model_name"])

    def execute(self, requests):
        return self.guard.answer(self._answer, requests)

    def _answer(self, requests):
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
