"""The GPU path checked in one run: installs, CUDA training, TensorRT export, generation speed, serving.

    python benchmarks/gpu_check.py --out DIR [--wheels FOLDER | --no-install] [--stages a,b] [--dry-run]

Made for a bare CUDA machine lent for a few minutes. From the project's
checkout it installs what is missing, then runs the stages below, each in a
process of its own under its own time limit, so a stage that fails or hangs is
recorded in the JSON with its error and the next stage still runs. The whole
run keeps within ``--budget-s`` (450 s: inside 8 minutes with Python's start);
a stage that would start with less than ``MIN_STAGE_S`` left is skipped as out
of time. The stages that measure the two speed targets come before the long
test run.

DIR receives two files, rewritten after every stage: ``gpu_check.json`` and
``gpu_check.log`` (the plan, then everything the stages and their commands
printed). Checkpoints, the model repositories and the engines go to ``--work``.
``--dry-run`` needs no GPU: it checks the arguments, writes the JSON skeleton
(every stage "planned" or "skipped") and the log, and prints the plan: the
installs and the commands each stage would run.

Stages, in order:

* ``install``: the project without its dependencies (the host's CUDA build of
  torch stays), the other requirements of the serving, dev and gpu extras with
  torch held at the installed version, then onnxruntime-gpu in place of the CPU
  onnxruntime (both provide the ``onnxruntime`` module). ``--wheels FOLDER``
  installs the project and a folder of wheels offline instead, for a machine
  that reaches no package index.
* ``environment``: GPU, driver, torch and its CUDA, ONNX Runtime and its
  providers, TensorRT, the Triton wheel.
* ``train_fp32``, ``train_bf16``: ``ddn-train``, 200 steps on CUDA with
  split-and-prune; the loss must fall and stay finite; images/s excludes the
  first logging interval (CUDA start-up and kernel selection).
* ``export_trt_fp32``, ``export_trt_fp16``: ``ddn-export --trt`` (and
  ``--trt --fp16``) of the fp32 run's checkpoint, max batch 256. ddn-export
  checks the ONNX graph against PyTorch and the engine against ONNX Runtime;
  the stage reads the errors back and checks them again: uint8 images within
  one level for fp32, within 7 levels (float output within 0.05) for fp16.
  fp16 keeps 11 significant bits (relative rounding 2^-11, about 5e-4); the
  graph chains dozens of convolutions, residual adds and normalisations, so
  rounding can add up to a few 1e-3 to 1e-2 on outputs in [-1, 1], and one
  uint8 level is 2/255 (about 0.008) there: 7 levels (about 0.055) leaves room
  for that while still failing an engine that computes something else (a
  wrong branch or a broken layer moves pixels by tens of levels).
* ``latency``: batch 1, 64 and 256 for PyTorch all-K (the official way),
  PyTorch gathered branch, ONNX Runtime's CUDA provider, TensorRT fp32 and
  fp16; latency is the median call between ``torch.cuda.synchronize()``
  points, after warm-up calls that are not counted. ONNX Runtime and TensorRT
  take codes from and return images to host memory; PyTorch keeps both on the
  GPU, which can only favour the baseline.
* ``serve``: the Triton server of the nvidia-pytriton wheel (what ``ddn-serve``
  runs) with the python-backend twins on ONNX Runtime's CUDA provider
  (``--serve-provider``), dynamic batching on and off side by side, measured
  with ``benchmarks/serve_load.py``'s closed-loop sweep (1 and 16 clients,
  one image per request, alternating rounds). It also asks ``NAME_seeds``
  for three seeds (0, 1, 2**63-1): the images must equal ``NAME``'s for the
  seed rule's codes. ``NAME_seeds_trt`` (written with the engine) needs
  Triton's TensorRT backend, which the wheel's server lacks: the stage checks
  that it runs ``NAME_seed_codes`` then ``NAME_trt``.
* ``gpu_tests``: ``python -m pytest -m gpu``.

The JSON ends with ``summary``: every stage's status and the two targets,
TensorRT fp16 over PyTorch all-K in images/s at batch 1 and 64, and dynamic
batching over no batching in images/s at 16 clients, each to be at least 2x.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

import click

ROOT = Path(__file__).resolve().parent.parent
JSON_NAME, LOG_NAME = "gpu_check.json", "gpu_check.log"
FORMAT = "ddn-gpu-check/1"

# The model every stage uses, as ddn-train options: change it here alone (a named preset, say).
MODEL_ARGS = ("--dataset", "digits", "--image-size", "32", "--preset", "cpu")
TRAIN_STEPS, TRAIN_BATCH, TRAIN_LOG_EVERY = 200, 64, 20
NAME, MAX_BATCH = "ddn", 256
LATENCY_BATCHES = (1, 64, 256)
LATENCY_SECONDS, WARMUP_CALLS = 1.0, 5
SERVE_CONCURRENCY, SERVE_ROUNDS, SERVE_SLICE_S = (1, 16), 2, 1.5
TARGET_SPEEDUP, TARGET_BATCHES, TARGET_CLIENTS = 2.0, (1, 64), 16
FP32_LEVELS, FP16_LEVELS = 1, 7
DEFAULT_BUDGET_S, MIN_STAGE_S = 450.0, 20.0


class CheckFailed(Exception):
    """A stage that ran but whose numbers fail its check; ``result`` still goes into the JSON."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class Settings:
    """What the command line chose; every stage process is started with the same options."""

    out: Path
    work: Path
    install: bool
    wheels: Path | None
    serve_provider: str
    budget_s: float
    stages: tuple[str, ...]
    python: str = sys.executable

    def argv(self) -> list[str]:
        """This script's options that rebuild these settings in a stage process."""
        args = ["--out", str(self.out), "--work", str(self.work), "--serve-provider", self.serve_provider,
                "--budget-s", f"{self.budget_s:g}", "--stages", ",".join(self.stages)]
        if not self.install:
            args.append("--no-install")
        if self.wheels is not None:
            args += ["--wheels", str(self.wheels)]
        return args

    # -- where stages leave what the next ones use --------------------------------------
    def run_dir(self, precision: str) -> Path:
        return self.work / f"train_{precision}"

    def repository(self, fp16: bool = False) -> Path:
        """The fp16 engine gets a repository of its own, so the served (fp32) one holds a single python twin."""
        return self.work / ("model_repository_fp16" if fp16 else "model_repository")

    def stage_result(self, stage: str) -> Path:
        return self.work / "stages" / f"{stage}.json"


def shell(command: list[str]) -> str:
    return " ".join(shlex.quote(str(part)) for part in command)


class CommandFailed(RuntimeError):
    """A command a stage ran exited non-zero; the message holds its last line of output."""


def run_command(command: list[str]) -> str:
    """Run ``command`` from the checkout, its output copied to this process's (the log); returns the output.

    Raises CommandFailed naming the program and its last line of output.
    """
    print(f"$ {shell(command)}", flush=True)
    lines = []
    with subprocess.Popen([str(c) for c in command], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, errors="replace") as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    if process.returncode != 0:
        program = f"python -m {command[2]}" if command[1] == "-m" else str(command[0])
        last = next((line.strip() for line in reversed(lines) if line.strip()), "no output")
        raise CommandFailed(f"{program} exited with {process.returncode}: {last}")
    return "".join(lines)


# -- install ------------------------------------------------------------------------------

def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirement_name(requirement: str) -> str:
    for stop in "<>=!~[; ":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def install_commands(settings: Settings) -> list[list[str]]:
    """pip commands that give this interpreter the project and what the GPU stages import."""
    pip = [settings.python, "-m", "pip", "install", "--disable-pip-version-check"]
    editable = [*pip, "--no-deps", "--no-build-isolation", "-e", str(ROOT)]
    if settings.wheels is not None:
        wheels = sorted(str(p) for p in settings.wheels.glob("*.whl"))
        swap = any(Path(w).name.startswith("onnxruntime_gpu-") for w in wheels)
        uninstall = [[settings.python, "-m", "pip", "uninstall", "-y", "onnxruntime"]] if swap else []
        return [editable, *uninstall, [*pip, "--no-index", "--no-deps", *wheels]]
    project = _pyproject()
    extras = project["optional-dependencies"]
    requirements = [*project["dependencies"], *extras["train"], *extras["serving"], *extras["dev"], *extras["gpu"]]
    held = []
    if _version("torch") is not None:  # keep the host's torch: its CUDA build is what the GPU stages measure
        requirements = [r for r in requirements if _requirement_name(r) != "torch"]
        held = ["--constraint", str(settings.work / "constraints.txt")]
    gpu_ort = next(r for r in extras["gpu"] if _requirement_name(r) == "onnxruntime-gpu")
    return [editable, [*pip, *held, *requirements],
            [settings.python, "-m", "pip", "uninstall", "-y", "onnxruntime"],
            [*pip, "--force-reinstall", "--no-deps", gpu_ort]]


def stage_install(settings: Settings) -> dict:
    if _version("torch") is not None:
        (settings.work / "constraints.txt").write_text(f"torch=={_version('torch')}\n")
    steps, failed = [], []
    for command in install_commands(settings):
        start = time.perf_counter()
        try:
            run_command(command)
            step = {"command": shell(command), "ok": True}
        except CommandFailed as exc:
            step = {"command": shell(command), "ok": False, "error": str(exc)}
            failed.append(str(exc))
        steps.append({**step, "seconds": round(time.perf_counter() - start, 1)})
    result = {"steps": steps}
    if failed:  # the stages after this run all the same and say what they miss
        raise CheckFailed(f"{len(failed)} of {len(steps)} install commands failed: {'; '.join(failed)}", result)
    return result


# -- environment --------------------------------------------------------------------------

def stage_environment(settings: Settings) -> dict:
    import torch

    result: dict[str, Any] = {
        "python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": {name: _version(name) for name in (
            "ddn-serve", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-cu12",
            "tensorrt-cu13", "nvidia-pytriton", "tritonclient")},
    }
    try:
        import onnxruntime

        result["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError as exc:
        result["onnxruntime_providers"] = f"cannot import onnxruntime: {exc}"
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        result["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        result["nvidia_smi"] = f"not available: {exc}"
    print(json.dumps(result, indent=2), flush=True)
    if not result["cuda_available"]:
        raise CheckFailed("torch sees no CUDA GPU", result)
    return result


# -- training -----------------------------------------------------------------------------

def train_command(settings: Settings, precision: str, device: str = "cuda", steps: int = TRAIN_STEPS) -> list[str]:
    """ddn-train (run as its module, so no PATH lookup) on the check's model."""
    return [settings.python, "-m", "ddn.training.cli", *MODEL_ARGS, "--steps", str(steps),
            "--batch", str(TRAIN_BATCH), "--device", device, "--precision", precision, "--split-and-prune",
            "--checkpoint-every", "0", "--log-every", str(TRAIN_LOG_EVERY), "--sample-seeds", "16",
            "--no-progress", "--out", str(settings.run_dir(precision if device == "cuda" else "untrained"))]


def stage_train(settings: Settings, precision: str) -> dict:
    from ddn.training.run_outputs import RunLog

    run = settings.run_dir(precision)
    start = time.perf_counter()
    run_command(train_command(settings, precision))
    entries = RunLog(run / "log.jsonl").read()
    losses = [entry["loss"] for entry in entries]
    rates = sorted(entry["images_per_s"] for entry in entries[1:])  # the first interval holds CUDA's start-up
    result = {
        "steps": entries[-1]["step"] if entries else 0, "precision": precision, "batch": TRAIN_BATCH,
        "seconds": round(time.perf_counter() - start, 1), "loss_by_interval": [round(x, 5) for x in losses],
        "splits": entries[-1]["splits"] if entries else 0,
        "images_per_s": round(rates[len(rates) // 2], 1) if rates else None,
        "checkpoint": str(run / "last.safetensors"),
    }
    result["loss_finite"] = bool(losses) and all(math.isfinite(x) for x in losses)
    result["loss_falls"] = result["loss_finite"] and losses[-1] < losses[0]
    if not (result["loss_finite"] and result["loss_falls"]):
        raise CheckFailed("the loss did not fall or is not finite", result)
    return result


# -- export -------------------------------------------------------------------------------

def untrained_checkpoint_command(settings: Settings) -> list[str]:
    """One CPU step: a checkpoint of the check's model when neither CUDA run left one (speed needs no training)."""
    return train_command(settings, "fp32", device="cpu", steps=1)


def checkpoint(settings: Settings) -> tuple[Path, str]:
    """The checkpoint the export, latency and serve stages use, and where it came from."""
    for precision in ("fp32", "bf16"):
        path = settings.run_dir(precision) / "last.safetensors"
        if path.is_file():
            return path, f"train_{precision}"
    path = settings.run_dir("untrained") / "last.safetensors"
    if not path.is_file():
        run_command(untrained_checkpoint_command(settings))
    return path, "untrained (no CUDA training run left a checkpoint)"


def export_command(settings: Settings, checkpoint_path: Path | str, trt: bool = True, fp16: bool = False) -> list[str]:
    command = [settings.python, "-m", "ddn.export.cli", str(checkpoint_path), "--name", NAME,
               "--repository", str(settings.repository(fp16)), "--max-batch", str(MAX_BATCH), "--graphs", "generate",
               "--instance-kind", "auto"]
    if trt:
        command += ["--trt", "--timing-cache", str(settings.work / "tensorrt-timing.cache")]
    return command + (["--fp16"] if fp16 else [])


def _entry_json(repository: Path, entry: str) -> dict:
    return json.loads((repository / entry / "ddn.json").read_text())


def stage_export(settings: Settings, fp16: bool) -> dict:
    path, source = checkpoint(settings)
    start = time.perf_counter()
    run_command(export_command(settings, path, fp16=fp16))
    repository = settings.repository(fp16)
    onnx_check = _entry_json(repository, NAME)["verification"]
    engine_check = _entry_json(repository, f"{NAME}_trt")["verification"]
    allowed = FP16_LEVELS if fp16 else FP32_LEVELS
    result = {"checkpoint": source, "seconds": round(time.perf_counter() - start, 1),
              "onnx_vs_pytorch": onnx_check, "engine_vs_onnxruntime": engine_check,
              "allowed_uint8_levels": allowed, "engine": str(repository / f"{NAME}_trt" / "1" / "model.plan")}
    if engine_check["max_abs_error"]["images"] > allowed or engine_check.get("fp16") != fp16:
        raise CheckFailed(f"engine images differ from ONNX Runtime by more than {allowed} level(s)", result)
    return result


def onnx_repository(settings: Settings) -> Path:
    """The fp32 repository with its ONNX entry, exported now (no engine) if the export stage left none."""
    repository = settings.repository()
    if not (repository / NAME / "1" / "model.onnx").is_file():
        run_command(export_command(settings, checkpoint(settings)[0], trt=False))
    return repository


# -- generation speed -----------------------------------------------------------------------

def cuda_session(onnx_path: Path):
    """An ONNX Runtime session that really runs on the GPU (ORT would fall back to the CPU silently)."""
    import onnxruntime as ort

    from ddn.repository_contract import EXECUTION_PROVIDERS, onnxruntime_session

    if hasattr(ort, "preload_dlls"):  # the CUDA/cuDNN libraries of the nvidia-* wheels, if torch did not load them
        ort.preload_dlls()
    session = onnxruntime_session(onnx_path, providers=EXECUTION_PROVIDERS["cuda"])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"ONNX Runtime {ort.__version__} has no CUDA provider "
                           f"(it has {', '.join(ort.get_available_providers())}): install onnxruntime-gpu")
    return session


def stage_latency(settings: Settings) -> dict:
    import numpy as np
    import torch

    from ddn.codes import codes_from_seed
    from ddn.export.tensorrt_build import EngineRunner
    from ddn.training.checkpoint import load_generator
    from benchmarks.generate_speed import pytorch_call
    from benchmarks.measure import summarize, time_calls

    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA GPU")
    path, source = checkpoint(settings)
    generator = load_generator(path).cuda().eval()
    onnx_path = onnx_repository(settings) / NAME / "1" / "model.onnx"
    runners: dict[str, Callable[[], Any]] = {}
    errors: dict[str, str] = {}

    def backend(name: str, make: Callable[[], Any]) -> None:
        try:
            runners[name] = make()
        except Exception as exc:  # one missing backend must not hide the others' numbers
            errors[name] = f"{type(exc).__name__}: {exc}"
            print(f"{name}: {errors[name]}", flush=True)

    backend("onnxruntime_cuda", lambda: cuda_session(onnx_path))
    for label, fp16 in (("tensorrt_fp32", False), ("tensorrt_fp16", True)):
        plan = settings.repository(fp16) / f"{NAME}_trt" / "1" / "model.plan"
        backend(label, lambda plan=plan: EngineRunner(plan.read_bytes()))

    def synchronized(call: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            out = call()
            torch.cuda.synchronize()
            return out
        return run

    batches: dict[str, dict] = {}
    for batch in LATENCY_BATCHES:
        codes = codes_from_seed(range(batch), generator.num_layers, generator.branch_counts)
        codes_gpu = torch.from_numpy(codes).long().cuda()
        calls = {"pytorch_all_k": pytorch_call(generator, codes_gpu, all_k=True),
                 "pytorch_gathered": pytorch_call(generator, codes_gpu, all_k=False)}
        if "onnxruntime_cuda" in runners:
            calls["onnxruntime_cuda"] = lambda s=runners["onnxruntime_cuda"]: s.run(["images"], {"codes": codes})[0]
        for label in ("tensorrt_fp32", "tensorrt_fp16"):
            if label in runners:
                calls[label] = lambda r=runners[label]: r({"codes": codes})["images"]
        row: dict[str, Any] = {}
        reference = calls["onnxruntime_cuda"]() if "onnxruntime_cuda" in calls else None
        for method, call in calls.items():
            call = synchronized(call)
            for _ in range(WARMUP_CALLS):
                out = call()
            row[method] = summarize(batch, time_calls(call, LATENCY_SECONDS))
            if reference is not None and method.startswith("tensorrt"):
                row[method]["max_uint8_levels_vs_onnxruntime_cuda"] = int(
                    np.abs(out.astype(np.int16) - reference.astype(np.int16)).max())
            print(f"batch {batch} {method}: {row[method]}", flush=True)
        batches[str(batch)] = row
    return {"checkpoint": source, "gpu": torch.cuda.get_device_name(0), "batches": batches,
            "unavailable": errors, "warmup_calls": WARMUP_CALLS, "seconds_per_point": LATENCY_SECONDS}


# -- serving --------------------------------------------------------------------------------

SEED_CHECK = (0, 1, 2**63 - 1)


def seed_entries_check(grpc_url: str, repository: Path) -> dict:
    """``NAME_seeds`` on a running server against ``NAME`` on the seed rule's codes; ``NAME_seeds_trt``'s steps."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    from ddn.codes import codes_from_seed
    from ddn.serving.repository_view import read_config

    client = grpcclient.InferenceServerClient(grpc_url)

    def images(model: str, name: str, array: np.ndarray) -> np.ndarray:
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        return client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput("images")]).as_numpy("images")

    info = _entry_json(repository, NAME)
    by_seed = images(f"{NAME}_seeds", "seeds", np.array(SEED_CHECK, np.int64).reshape(-1, 1))
    by_codes = images(NAME, "codes", codes_from_seed(list(SEED_CHECK), info["num_layers"], info["branch_counts"]))
    result: dict[str, Any] = {"seeds": list(SEED_CHECK), "seeds_equal_codes": bool(np.array_equal(by_seed, by_codes))}
    if (repository / f"{NAME}_trt").is_dir():
        ensemble = repository / f"{NAME}_seeds_trt"
        result["seeds_trt_steps"] = ([step.model_name for step in read_config(ensemble).ensemble_scheduling.step]
                                     if ensemble.is_dir() else None)
    return result


def stage_serve(settings: Settings) -> dict:
    import contextlib

    from ddn.codes import codes_from_seed
    from ddn.serving.repository_view import cpu_repository_view, cpu_settings, read_config
    from ddn.serving.triton_server import TritonServer
    from serve_load import closed_loop, server_settings, sweep_results, sweep_round

    repository = onnx_repository(settings)
    info = _entry_json(repository, NAME)
    shape = tuple(info["image_shape"])
    codes = codes_from_seed(range(4096), info["num_layers"], info["branch_counts"])
    variants = {"dynamic_batching": cpu_settings(ort_provider=settings.serve_provider),
                "no_batching": cpu_settings(ort_provider=settings.serve_provider, dynamic_batching=False)}
    levels = list(SERVE_CONCURRENCY)
    parts: dict[tuple[str, int], list[dict]] = {}
    configs = {}
    with contextlib.ExitStack() as stack:
        servers = {}
        for variant, edit in variants.items():
            print(f"starting the server with {variant}, provider {settings.serve_provider} ...", flush=True)
            view = stack.enter_context(cpu_repository_view(repository, edit))
            configs[variant] = server_settings(read_config(view / NAME))
            servers[variant] = stack.enter_context(TritonServer(view, startup_timeout=120))
            closed_loop(servers[variant], codes, max(levels), 1.0, NAME, shape)  # warm-up, not counted
        seeds = seed_entries_check(servers["dynamic_batching"].grpc_url, repository)
        for r in range(SERVE_ROUNDS):
            sweep_round(servers, codes, levels, SERVE_SLICE_S, parts, reverse=r % 2 == 1, model=NAME,
                        image_shape=shape)
    sweeps = sweep_results(parts, list(variants), levels)
    print(json.dumps(sweeps, indent=2), flush=True)
    result = {"provider": settings.serve_provider, "server_config": configs, "rounds": SERVE_ROUNDS,
              "seconds_per_slice": SERVE_SLICE_S, "one_image_per_request": sweeps, "seed_entries": seeds}
    if not seeds["seeds_equal_codes"]:
        raise CheckFailed(f"{NAME}_seeds gives other images than {NAME} for the seed rule's codes", result)
    if seeds.get("seeds_trt_steps", [f"{NAME}_seed_codes", f"{NAME}_trt"]) != [f"{NAME}_seed_codes", f"{NAME}_trt"]:
        raise CheckFailed(f"{NAME}_seeds_trt runs {seeds['seeds_trt_steps']}, not {NAME}_seed_codes then {NAME}_trt",
                          result)
    return result


# -- the -m gpu tests -------------------------------------------------------------------------

def test_command(settings: Settings) -> list[str]:
    return [settings.python, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", "tests"]


def stage_gpu_tests(settings: Settings) -> dict:
    import re

    try:
        output, error = run_command(test_command(settings)), None
    except CommandFailed as exc:  # failed tests: still count them
        output, error = "", str(exc)
    last = error or next((line for line in reversed(output.splitlines()) if line.strip()), "")
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", last)}
    result = {"counts": counts, "last_line": last}
    if error or not counts.get("passed"):
        raise CheckFailed(f"pytest -m gpu: {last or 'no output'}", result)
    return result


# -- the stages and the run -------------------------------------------------------------------

@dataclass(frozen=True)
class Stage:
    name: str
    limit_s: float
    does: str
    run: Callable[[Settings], dict]
    commands: Callable[[Settings], list[str]]  # what the plan prints: the commands it runs, or what it does


def _fallbacks(settings: Settings) -> list[str]:
    return [f"(without a training checkpoint) {shell(untrained_checkpoint_command(settings))}"]


def _onnx_fallback(settings: Settings) -> list[str]:
    return [*_fallbacks(settings), "(without an ONNX entry) " + shell(export_command(settings, "CHECKPOINT", trt=False))]


STAGES = (
    Stage("install", 150, "pip installs", stage_install,
          lambda s: [shell(c) for c in install_commands(s)]),
    Stage("environment", 45, "GPU, driver, torch, ONNX Runtime providers, TensorRT, Triton wheel", stage_environment,
          lambda s: ["nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader"]),
    Stage("train_fp32", 75, f"ddn-train {TRAIN_STEPS} steps on CUDA, fp32, split-and-prune: loss falls, no NaN",
          lambda s: stage_train(s, "fp32"), lambda s: [shell(train_command(s, "fp32"))]),
    Stage("train_bf16", 75, f"ddn-train {TRAIN_STEPS} steps on CUDA, bf16 autocast, split-and-prune",
          lambda s: stage_train(s, "bf16"), lambda s: [shell(train_command(s, "bf16"))]),
    Stage("export_trt_fp32", 120, f"ddn-export --trt: engine vs ONNX Runtime within {FP32_LEVELS} uint8 level",
          lambda s: stage_export(s, fp16=False),
          lambda s: [*_fallbacks(s), shell(export_command(s, s.run_dir("fp32") / "last.safetensors"))]),
    Stage("export_trt_fp16", 120, f"ddn-export --trt --fp16: engine vs ONNX Runtime within {FP16_LEVELS} levels",
          lambda s: stage_export(s, fp16=True),
          lambda s: [*_fallbacks(s), shell(export_command(s, s.run_dir("fp32") / "last.safetensors", fp16=True))]),
    Stage("latency", 90, "latency and images/s at batch " + ", ".join(map(str, LATENCY_BATCHES)) +
          ": PyTorch all-K, PyTorch gathered, ONNX Runtime CUDA, TensorRT fp32 and fp16", stage_latency,
          _onnx_fallback),
    Stage("serve", 120, "Triton (ddn-serve's server) with the twins on ONNX Runtime's --serve-provider; serve_load "
          "sweep at " + ", ".join(map(str, SERVE_CONCURRENCY)) + " clients, dynamic batching on and off",
          stage_serve, _onnx_fallback),
    Stage("gpu_tests", 180, "the -m gpu tests", stage_gpu_tests, lambda s: [shell(test_command(s))]),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


def _speedup(numerator: float | None, denominator: float | None) -> dict:
    value = round(numerator / denominator, 2) if numerator and denominator else None
    return {"value": value, "target": f">= {TARGET_SPEEDUP:g}", "met": None if value is None else value >= TARGET_SPEEDUP}


def summary(stages: dict[str, dict]) -> dict:
    """Each stage's status and the two targets from the measured images/s (null where not measured)."""
    latency = (stages.get("latency") or {}).get("result") or {}
    targets = {}
    for batch in TARGET_BATCHES:
        row = latency.get("batches", {}).get(str(batch), {})
        targets[f"tensorrt_fp16_over_pytorch_all_k_batch_{batch}"] = _speedup(
            row.get("tensorrt_fp16", {}).get("images_per_s"), row.get("pytorch_all_k", {}).get("images_per_s"))
    sweeps = ((stages.get("serve") or {}).get("result") or {}).get("one_image_per_request", {})

    def at_clients(variant: str) -> float | None:
        return next((r["images_per_s"] for r in sweeps.get(variant, []) if r["concurrency"] == TARGET_CLIENTS), None)

    targets[f"dynamic_batching_over_off_{TARGET_CLIENTS}_clients"] = _speedup(at_clients("dynamic_batching"),
                                                                              at_clients("no_batching"))
    met = [t["met"] for t in targets.values()]
    return {"stages": {name: stage.get("status") for name, stage in stages.items()}, "targets": targets,
            "all_targets_met": None if None in met else all(met)}


class Report:
    """The JSON and the log in ``out``; the JSON is rewritten (atomically) after every change."""

    def __init__(self, settings: Settings, dry_run: bool, log: TextIO):
        self.settings, self.log = settings, log
        self.data: dict[str, Any] = {
            "format": FORMAT, "dry_run": dry_run,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]], "checkout": str(ROOT),
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(settings).items()},
            "model": {"ddn_train_options": list(MODEL_ARGS), "max_batch": MAX_BATCH},
            "stages": {},
        }

    def say(self, message: str) -> None:
        click.echo(message)
        self.log.write(message + "\n")
        self.log.flush()

    def stage(self, name: str, **fields: Any) -> None:
        self.data["stages"].setdefault(name, {}).update(fields)
        self.write()

    def write(self) -> None:
        self.data.pop("summary", None)
        self.data["summary"] = summary(self.data["stages"])  # the last key: the JSON ends with it
        path = self.settings.out / JSON_NAME
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.data, indent=2) + "\n")
        partial.replace(path)


def plan(settings: Settings, report: Report) -> None:
    """Every stage's planned or skipped entry in the JSON, and the plan printed."""
    report.say(f"gpu_check: out {settings.out}, work {settings.work}, budget {settings.budget_s:g} s")
    for stage in STAGES:
        commands = stage.commands(settings)
        if stage.name not in settings.stages:
            report.stage(stage.name, status="skipped", reason="not in --stages", does=stage.does)
            report.say(f"\n[{stage.name}] skipped (not in --stages)")
            continue
        if stage.name == "install" and not settings.install:
            report.stage(stage.name, status="skipped", reason="--no-install", does=stage.does)
            report.say("\n[install] skipped (--no-install)")
            continue
        report.stage(stage.name, status="planned", does=stage.does, time_limit_s=stage.limit_s, commands=commands)
        report.say(f"\n[{stage.name}] up to {stage.limit_s:g} s: {stage.does}")
        for command in commands:
            report.say(f"  {command}")


def _tail(path: Path, start: int, lines: int = 3) -> str:
    """The last lines the log gained since byte ``start``: the reason a stage process gave."""
    with open(path, "rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    return " | ".join([line.strip() for line in text.splitlines() if line.strip()][-lines:])


def execute(settings: Settings, report: Report) -> None:
    """Run the planned stages in order, each in its own process group under its limit and the budget."""
    deadline = time.monotonic() + settings.budget_s
    log_path = settings.out / LOG_NAME
    for stage in STAGES:
        entry = report.data["stages"][stage.name]
        if entry["status"] != "planned":
            continue
        left = deadline - time.monotonic()
        if left < MIN_STAGE_S:
            report.stage(stage.name, status="skipped", reason=f"out of time ({max(left, 0):.0f} s of the budget left)")
            report.say(f"[{stage.name}] skipped: out of time")
            continue
        limit = min(stage.limit_s, left)
        result_path = settings.stage_result(stage.name)
        result_path.unlink(missing_ok=True)
        command = [settings.python, str(Path(__file__).resolve()), *settings.argv(), "--run-stage", stage.name]
        report.say(f"[{stage.name}] running (limit {limit:.0f} s) ...")
        report.log.write(f"$ {shell(command)}\n")
        report.log.flush()
        start, log_start = time.monotonic(), log_path.stat().st_size
        process = subprocess.Popen(command, cwd=ROOT, stdout=report.log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the stage and every command it started
            process.wait()
            code = None
        seconds = round(time.monotonic() - start, 1)
        outcome = json.loads(result_path.read_text()) if result_path.is_file() else {}
        if code is None:
            fields = {"status": "timed_out", "error": f"stopped at its limit of {limit:.0f} s"}
        elif code == 0 and "result" in outcome:
            fields = {"status": "passed"}
        else:
            reason = outcome.get("error") or f"stage process exited with {code}: {_tail(log_path, log_start)}"
            fields = {"status": "failed", "error": reason}
        report.stage(stage.name, seconds=seconds, **fields, **{k: v for k, v in outcome.items() if k == "result"})
        report.say(f"[{stage.name}] {fields['status']} in {seconds:g} s" +
                   (f": {fields['error']}" if "error" in fields else ""))


def stage_process(settings: Settings, name: str) -> int:
    """The body of one stage's process: its result or error goes to the stage's JSON file."""
    stage = next(s for s in STAGES if s.name == name)
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent)]  # serve_load; the benchmarks package
    path = settings.stage_result(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        outcome: dict[str, Any] = {"result": stage.run(settings)}
        code = 0
    except CheckFailed as exc:
        outcome, code = {"error": str(exc), "result": exc.result}, 1
    except CommandFailed as exc:  # the command's own output is in the log already
        outcome, code = {"error": str(exc)}, 1
    except Exception as exc:  # recorded; the next stage runs in a fresh process
        traceback.print_exc()
        outcome, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
    path.write_text(json.dumps(outcome, indent=2, default=str) + "\n")
    return code


def _stage_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in STAGE_NAMES]
    if unknown or not names:
        raise click.UsageError(f"--stages: unknown stage(s) {', '.join(unknown) or '(none given)'}; "
                               f"choose from {','.join(STAGE_NAMES)}")
    return names


@click.command(context_settings={"show_default": True})
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help=f"folder for {JSON_NAME} and {LOG_NAME} (created; other files in it are left alone)")
@click.option("--work", type=click.Path(path_type=Path), default=None,
              help="folder for checkpoints, repositories and engines [default: a new folder in the temp dir]")
@click.option("--install/--no-install", default=True, help="run the install stage")
@click.option("--wheels", type=click.Path(path_type=Path), default=None,
              help="install the project and these wheels offline (--no-index --no-deps) instead of from the index")
@click.option("--serve-provider", type=click.Choice(["cuda", "tensorrt"]), default="cuda",
              help="ONNX Runtime provider of the served python-backend twins")
@click.option("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="wall-clock budget of all stages, seconds")
@click.option("--stages", "stage_list", default=",".join(STAGE_NAMES), help="comma-separated stages to run")
@click.option("--dry-run", is_flag=True, help="check the arguments, write the JSON skeleton and log, print the plan")
@click.option("--run-stage", type=click.Choice(STAGE_NAMES), hidden=True, help="internal: run one stage's body")
def main(out: Path, work: Path | None, install: bool, wheels: Path | None, serve_provider: str, budget_s: float,
         stage_list: str, dry_run: bool, run_stage: str | None) -> None:
    """Check the GPU path end to end in one run; see the module docstring for the stages."""
    if out.exists() and not out.is_dir():
        raise click.UsageError(f"--out {out} is a file; give a folder")
    if wheels is not None and not any(wheels.glob("*.whl")):
        raise click.UsageError(f"--wheels {wheels} holds no .whl files")
    if wheels is not None and not install:
        raise click.UsageError("--wheels installs, --no-install does not: give one of them")
    if not budget_s > 0:
        raise click.UsageError(f"--budget-s must be positive, got {budget_s:g}")
    settings = Settings(out=out.resolve(), install=install, wheels=wheels.resolve() if wheels else None,
                        work=(work or Path(tempfile.gettempdir()) / f"ddn-gpu-check-{os.getpid()}").resolve(),
                        serve_provider=serve_provider, budget_s=budget_s, stages=_stage_list(stage_list))
    if run_stage is not None:
        sys.exit(stage_process(settings, run_stage))
    settings.out.mkdir(parents=True, exist_ok=True)
    with open(settings.out / LOG_NAME, "w") as log:
        report = Report(settings, dry_run, log)
        plan(settings, report)
        if dry_run:
            report.say(f"\ndry run: nothing installed or run; {settings.out / JSON_NAME} lists the plan")
            return
        settings.work.mkdir(parents=True, exist_ok=True)
        report.say("")
        execute(settings, report)
        report.data["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        report.write()
        report.say(json.dumps(report.data["summary"], indent=2))


def cli() -> None:
    """``main`` with every argument error on one line (exit 2) instead of click's usage block."""
    try:
        main(standalone_mode=False)
    except click.UsageError as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)


if __name__ == "__main__":
    cli()
