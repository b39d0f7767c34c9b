"""The GPU check's settings: the command line's choices, the model and budgets every stage shares."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: stage commands run from here
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
# Engine vs ONNX Runtime, in uint8 levels (one level is 2/255 on [-1, 1]). fp16 keeps 11 significant bits and the
# graph chains dozens of convolutions, adds and normalisations, so rounding adds up to a few 1e-3 to 1e-2; 7 levels
# leave room for that and still fail an engine that computes something else (tens of levels).
FP32_LEVELS, FP16_LEVELS = 1, 7
DEFAULT_BUDGET_S, MIN_STAGE_S = 450.0, 20.0


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
        """The command line options that rebuild these settings in a stage process."""
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

