"""The GPU check's stages that run the project's own commands: environment, training, export, the -m gpu tests.

Each stage function takes the settings and returns its result for the JSON, or
raises CheckFailed (numbers that fail the check, with the result) or
CommandFailed (a command that exited non-zero).
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu_check.commands import CheckFailed, CommandFailed, run_command
from benchmarks.gpu_check.install import installed_version
from benchmarks.gpu_check.settings import (MAX_BATCH, MODEL_ARGS, NAME, TRAIN_BATCH, TRAIN_LOG_EVERY, TRAIN_STEPS,
                                           FP16_LEVELS, FP32_LEVELS, Settings)


# -- environment --------------------------------------------------------------------------

def stage_environment(settings: Settings) -> dict:
    """GPU, driver, torch and its CUDA, ONNX Runtime and its providers, TensorRT, the Triton wheel."""
    import torch

    result: dict[str, Any] = {
        "python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": {name: installed_version(name) for name in (
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
    """ddn-train on CUDA: the loss must fall and stay finite; images/s leaves out the first logging interval."""
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


def entry_json(repository: Path, entry: str) -> dict:
    return json.loads((repository / entry / "ddn.json").read_text())


def stage_export(settings: Settings, fp16: bool) -> dict:
    """ddn-export --trt (ONNX checked against PyTorch, the engine against ONNX Runtime); the errors checked again."""
    path, source = checkpoint(settings)
    start = time.perf_counter()
    run_command(export_command(settings, path, fp16=fp16))
    repository = settings.repository(fp16)
    onnx_check = entry_json(repository, NAME)["verification"]
    engine_check = entry_json(repository, f"{NAME}_trt")["verification"]
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


# -- the -m gpu tests -------------------------------------------------------------------------

def gpu_tests_command(settings: Settings) -> list[str]:
    return [settings.python, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", "tests"]


def stage_gpu_tests(settings: Settings) -> dict:
    """The ``-m gpu`` tests; failed tests are still counted."""
    try:
        output, error = run_command(gpu_tests_command(settings)), None
    except CommandFailed as exc:  # failed tests: still count them
        output, error = "", str(exc)
    last = error or next((line for line in reversed(output.splitlines()) if line.strip()), "")
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", last)}
    result = {"counts": counts, "last_line": last}
    if error or not counts.get("passed"):
        raise CheckFailed(f"pytest -m gpu: {last or 'no output'}", result)
    return result
