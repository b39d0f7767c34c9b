"""The generate-by-seed entries: ``NAME_seed_codes`` (seeds -> codes by a copy of :mod:`ddn.codes`, numpy only) and the
ensembles ``NAME_seeds``, so any Triton client gets for a seed the bytes
:meth:`ddn.serving.client.DDNClient.generate` gets (docs/export.md).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

import ddn.codes
from ddn.repository_contract import PYTHON_MODEL_FILE, SEEDS_INPUT, GraphLayout, TensorSpec

from . import stall_guard
from .onnx_export import VerificationError
from .triton_config import ensemble_config, graph_config, write_config

MODEL_TEMPLATE = Path(__file__).with_name("triton_seed_codes_model.py")
# The names triton_seed_codes_model.py loads (it cannot import this module; tests/test_serving_seeds.py pins them).
SEED_RULE_FILE = "seed_rule.py"
STALL_GUARD_FILE = "stall_guard.py"
# 0 and the largest seed an INT64 input carries, and a few between.
VERIFY_SEEDS = (0, 1, 42, 2**32 + 7, 2**63 - 1)

# Runs the staged seed rule and stall guard in a fresh interpreter in which ``ddn`` cannot be imported, as on a GPU
# server.
_VERIFY_SCRIPT = """
import importlib.util, json, sys
sys.modules["ddn"] = None
def load(path):
    spec = importlib.util.spec_from_file_location("staged", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
rule = load(sys.argv[1])
guard = load(sys.argv[3]).StallGuard("verify", stop=lambda message: None)  # a stall here is no fault
assert guard.answer(list, [1]) == [1]
num_layers, branch_counts, seeds = json.loads(sys.argv[2])
codes = rule.codes_from_seed(seeds, num_layers, branch_counts)
try:
    rule.codes_from_seed([-1], num_layers, branch_counts)
    refused = None
except ValueError as exc:
    refused = str(exc)
print(json.dumps({"codes": codes.tolist(), "dtype": codes.dtype.name, "negative_seed": refused}))
"""


class SeedStepError(VerificationError):
    """The staged seed step does not give the codes ddn.codes gives."""


def codes_spec(layout: GraphLayout) -> TensorSpec:
    return TensorSpec("codes", np.dtype(np.int32), (layout.num_layers,))


def write_seed_codes_entry(folder: Path, version: int, layout: GraphLayout, max_batch: int,
                           parameters: dict[str, str], comment: str) -> None:
    """``folder``: config.pbtxt, ``<version>/model.py``, ``seed_rule.py`` and ``stall_guard.py`` of the seed step."""
    (folder / str(version)).mkdir(parents=True)
    shutil.copyfile(MODEL_TEMPLATE, folder / str(version) / PYTHON_MODEL_FILE)
    shutil.copyfile(ddn.codes.__file__, folder / str(version) / SEED_RULE_FILE)
    shutil.copyfile(stall_guard.__file__, folder / str(version) / STALL_GUARD_FILE)
    write_config(folder, graph_config(name=folder.name, backend="python", max_batch=max_batch, inputs=[SEEDS_INPUT],
                                      outputs=[codes_spec(layout)], parameters=parameters, instance_kind="KIND_CPU"),
                 comment)


def write_seeds_ensemble(folder: Path, version: int, seed_codes: str, generate_entry: str, layout: GraphLayout,
                         outputs: Sequence[TensorSpec], max_batch: int, parameters: dict[str, str],
                         comment: str) -> None:
    """``folder``: the ensemble seeds -> ``seed_codes`` -> codes -> ``generate_entry`` -> ``outputs``."""
    (folder / str(version)).mkdir(parents=True)  # Triton wants a version folder, empty for an ensemble
    steps = [(seed_codes, {SEEDS_INPUT.name: SEEDS_INPUT.name}, {"codes": "codes"}),
             (generate_entry, {"codes": "codes"}, {s.name: s.name for s in outputs})]
    write_config(folder, ensemble_config(name=folder.name, max_batch=max_batch, inputs=[SEEDS_INPUT], outputs=outputs,
                                         steps=steps, parameters=parameters), comment)


def verify_seed_codes(version_dir: Path, layout: GraphLayout, seeds: Sequence[int] = VERIFY_SEEDS) -> dict:
    """Run the staged seed rule and stall guard without the ``ddn`` package; SeedStepError unless both run and the
    rule matches ddn.codes.

    Returns what was checked, for ddn.json: the seeds, and the message a negative seed gets.
    """
    arguments = json.dumps([layout.num_layers, list(layout.branch_counts), list(seeds)])
    result = subprocess.run([sys.executable, "-c", _VERIFY_SCRIPT, str(version_dir / SEED_RULE_FILE), arguments,
                             str(version_dir / STALL_GUARD_FILE)], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise SeedStepError(f"the seed step's {SEED_RULE_FILE} or {STALL_GUARD_FILE} does not run without the ddn "
                            f"package: {last}")
    served = json.loads(result.stdout)
    expected = ddn.codes.codes_from_seed(list(seeds), layout.num_layers, layout.branch_counts)
    if served["dtype"] != "int32" or not np.array_equal(np.asarray(served["codes"]), expected):
        raise SeedStepError(f"the seed step's codes differ from ddn.codes.codes_from_seed for seeds {list(seeds)}")
    if served["negative_seed"] is None:
        raise SeedStepError("the seed step accepts the negative seed -1; it must refuse it")
    return {"seeds": list(seeds), "codes_equal_ddn_codes": True, "negative_seed": served["negative_seed"]}
