"""Triton python-backend model: seeds -> codes by the project's seed rule, the first step of ``<G>_seeds``. It runs
beside a copy of ddn/codes.py (``seed_rule.py``), so it needs numpy only; a negative seed gets a one-line error and
the requests batched with it are answered.
"""
import importlib.util
import json
import os

import triton_python_backend_utils as pb_utils

SEED_RULE_FILE = "seed_rule.py"


def load_seed_rule(folder):
    """The seed_rule.py of ``folder`` as a module (loaded by path: the ``ddn`` package need not exist)."""
    spec = importlib.util.spec_from_file_location("ddn_seed_rule", os.path.join(folder, SEED_RULE_FILE))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.rule = load_seed_rule(os.path.join(args["model_repository"], args["model_version"]))
        self.num_layers = int(parameters["ddn_num_layers"])
        self.branch_counts = [int(k) for k in parameters["ddn_branch_counts"].split(",")]

    def execute(self, requests):
        # Each seed is its own generator, so batched requests gain nothing from concatenation:
        # answer them one by one, and a bad seed fails only its own request.
        responses = []
        for request in requests:
            seeds = pb_utils.get_input_tensor_by_name(request, "seeds").as_numpy().reshape(-1)
            try:
                codes = self.rule.codes_from_seed(seeds.tolist(), self.num_layers, self.branch_counts)
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("codes", codes)]))
        return responses
