"""Triton python-backend model: seeds -> codes by the project's seed rule, the first step of ``<G>_seeds``. It runs
beside a copy of ddn/codes.py (``seed_rule.py``), so it needs numpy only; a negative seed gets a one-line error and
the requests batched with it are answered. A copy of stall_guard.py beside it stops the server rather than let an
answer computed across a freeze reach the wrong batch.
"""
import importlib.util
import json
import os

import triton_python_backend_utils as pb_utils

SEED_RULE_FILE = "seed_rule.py"  # the names ddn-export copies them to (export/seed_entries.py)
STALL_GUARD_FILE = "stall_guard.py"


def load_beside(folder, file):
    """``folder/file`` as a module (loaded by path: the ``ddn`` package need not exist)."""
    spec = importlib.util.spec_from_file_location("ddn_" + file[:-3], os.path.join(folder, file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.rule = load_beside(folder, SEED_RULE_FILE)
        self.guard = load_beside(folder, STALL_GUARD_FILE).StallGuard(args["model_name"])
        self.num_layers = int(parameters["ddn_num_layers"])
        self.branch_counts = [int(k) for k in parameters["ddn_branch_counts"].split(",")]

    def execute(self, requests):
        return self.guard.answer(self._answer, requests)

    def _answer(self, requests):
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
