"""The GPU check's report: ``gpu_check.json`` (rewritten atomically after every change, ending with the summary)
and the log beside it."""
from __future__ import annotations

import dataclasses
import datetime
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import click

from benchmarks.gpu_check.settings import (FORMAT, JSON_NAME, MAX_BATCH, MODEL_ARGS, ROOT, TARGET_BATCHES,
                                           TARGET_CLIENTS, TARGET_SPEEDUP, Settings)


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
            "command": ["python", "-m", "benchmarks.gpu_check", *sys.argv[1:]], "checkout": str(ROOT),
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
