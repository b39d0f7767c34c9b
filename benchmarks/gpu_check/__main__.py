"""``python -m benchmarks.gpu_check --out DIR [--wheels W | --no-install] [--stages a,b] [--dry-run]``."""
from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

import click

from benchmarks.gpu_check.report import Report
from benchmarks.gpu_check.runner import STAGE_NAMES, execute, plan, stage_process
from benchmarks.gpu_check.settings import DEFAULT_BUDGET_S, JSON_NAME, LOG_NAME, Settings


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
    """Check the GPU path end to end in one run (the stages: benchmarks.gpu_check)."""
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
