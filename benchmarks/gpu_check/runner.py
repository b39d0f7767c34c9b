"""The GPU check's stages in order and the run: the plan, then each stage in a process of its own under its limit.

A stage that fails or hangs is recorded with its error and the next one still
runs; the whole run keeps within ``--budget-s``, and a stage that would start
with less than ``MIN_STAGE_S`` left is skipped as out of time.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from benchmarks.gpu_check.commands import CheckFailed, CommandFailed, shell
from benchmarks.gpu_check.install import install_commands, stage_install
from benchmarks.gpu_check.report import Report
from benchmarks.gpu_check.settings import (FP16_LEVELS, FP32_LEVELS, LATENCY_BATCHES, LOG_NAME, MIN_STAGE_S, ROOT,
                                           SERVE_CONCURRENCY, TRAIN_STEPS, Settings)
from benchmarks.gpu_check.speed import stage_latency, stage_serve
from benchmarks.gpu_check.stages import (export_command, gpu_tests_command, stage_environment, stage_export,
                                         stage_gpu_tests, stage_train, train_command, untrained_checkpoint_command)


@dataclass(frozen=True)
class Stage:
    """One stage: its time limit, what it does (for the plan), its body and the commands the plan shows."""

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
    Stage("gpu_tests", 180, "the -m gpu tests", stage_gpu_tests, lambda s: [shell(gpu_tests_command(s))]),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


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
        command = [settings.python, "-m", "benchmarks.gpu_check", *settings.argv(), "--run-stage", stage.name]
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
