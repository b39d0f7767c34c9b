"""``ddn-export``: freeze a checkpoint's generator into a Triton model repository (ONNX, optionally TensorRT)."""
from __future__ import annotations

import sys
from pathlib import Path

import click
import onnx

from ddn.cli import CommandError, command, power_of_two
from ddn.progress import on_terminal, progress_line
from ddn.repository_contract import GRAPH_KINDS, RepositoryError
from ddn.training.checkpoint import CheckpointError

from .exporter import EntryReport, ExportError, ModelExport
from .onnx_export import VerificationError
from .triton_config import INSTANCE_KINDS

DEFAULT_TIMING_CACHE = Path("~/.cache/ddn-serve/tensorrt-timing.cache")


def _report(report: EntryReport) -> None:
    if report.backend == "ensemble":
        click.echo(f"{report.entry:<28} {report.backend:<11} generation by seed (seeds INT64 -> images)")
        return
    if "seeds" in report.verification:
        click.echo(f"{report.entry:<28} {report.backend:<11} verified: codes equal ddn.codes for seeds "
                   + ", ".join(map(str, report.verification["seeds"])))
        return
    errors = ", ".join(f"{name} {error:.3g}" for name, error in report.verification.get("max_abs_error", {}).items())
    batches = ",".join(map(str, report.verification.get("batch_sizes", [])))
    click.echo(f"{report.entry:<28} {report.backend:<11} verified at batch {batches}: max abs error {errors}")
    operators = report.verification.get("operators")
    if operators:
        click.echo(f"{'':<28} {sum(operators.values())} nodes: "
                   + ", ".join(f"{op} {count}" for op, count in operators.items()))


def _graph_kinds(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    """--graphs as a list of known graph kinds (None: all the model supports)."""
    if value is None:
        return None
    kinds = [k.strip() for k in value.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in GRAPH_KINDS]
    if unknown:
        raise click.BadParameter(f"unknown graph {unknown[0]!r}; choose from {', '.join(GRAPH_KINDS)}", ctx, param)
    return kinds


class _Progress:
    """A bar on stderr advanced as each entry starts (the reports go to stdout); off a terminal, a timestamped line."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.started = label, total, 0
        self.bar = click.progressbar(length=total, label=label, file=sys.stderr,
                                     item_show_func=lambda entry: entry or "") if on_terminal() else None

    def __enter__(self) -> "_Progress":
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def step(self, entry: str) -> None:
        self.started += 1
        if self.bar is not None:
            self.bar.update(1, entry)
        else:
            progress_line(f"{self.label} {self.started}/{self.total}: {entry}")


@command(version_note="the model version to write is --model-version N")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Model name in the repository (the generation graph's entry).")
@click.option("--model-version", type=click.IntRange(min=1), default=1,
              help="Version folder to write; other versions of the entries are kept.")
@click.option("--repository", type=click.Path(path_type=Path), default=Path("model_repository"),
              help="Triton model repository to write into.")
@click.option("--max-batch", type=click.IntRange(min=1), default=64,
              help="Triton max_batch_size (and the TensorRT profile's maximum).")
@click.option("--graphs", "graph_list", default=None, metavar="LIST", show_default=False, callback=_graph_kinds,
              help=f"Comma-separated subset of {','.join(GRAPH_KINDS)}.  [default: all the model supports]")
@click.option("--superres-factor", type=int, default=4, callback=power_of_two,
              help="Low-resolution factor of the super-resolution graph.")
@click.option("--instance-kind", type=click.Choice(sorted(INSTANCE_KINDS)), default="auto",
              help="Instance group of the onnxruntime entries: auto (GPU if the server has one, else CPU), "
                   "gpu or cpu.")
@click.option("--trt", is_flag=True, help="Also build TensorRT engines (<entry>_trt); needs a CUDA GPU and tensorrt.")
@click.option("--fp16", is_flag=True, help="Build the TensorRT generation graph in fp16.")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=DEFAULT_TIMING_CACHE,
              help="TensorRT timing cache, reused across builds.")
def main(checkpoint: Path, name: str, model_version: int, repository: Path, max_batch: int, graph_list: list[str] | None,
         superres_factor: int, instance_kind: str, trt: bool, fp16: bool, timing_cache: Path) -> None:
    """Export CHECKPOINT's sampled-path and guided graphs to REPOSITORY/NAME*/VERSION.

    Every graph is checked (onnx.checker, ONNX Runtime against PyTorch) before anything is moved in; a failed check
    exits non-zero and leaves the repository as it was.
    """
    if fp16 and not trt:
        raise click.UsageError("--fp16 applies to TensorRT engines; add --trt")
    try:
        job = ModelExport(checkpoint, name, repository, model_version, max_batch, superres_factor, instance_kind)
        kinds = job.kinds(graph_list)
        with _Progress("ONNX", len(kinds)) as progress:
            reports = job.write_onnx(kinds, step=progress.step)
    except (CheckpointError, ExportError, RepositoryError) as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot write into {repository}: {exc}") from None
    except (VerificationError, onnx.checker.ValidationError) as exc:
        raise CommandError(f"verification failed, nothing written: {exc}") from None
    graphs = sum(report.kind in kinds for report in reports)
    click.echo(f"wrote {graphs} graph{'s' if graphs != 1 else ''} (each with a python-backend twin) "
               f"{'and the seed entries ' if graphs < len(reports) else ''}into {job.repository}")
    for report in reports:
        _report(report)
    if not trt:
        return

    from .tensorrt_build import TensorRTError, missing_requirements

    missing = missing_requirements()
    if missing:
        raise CommandError(f"--trt needs {' and '.join(missing)}; the ONNX entries were written")
    try:
        with _Progress("TensorRT", len(kinds)) as progress:
            trt_reports = job.write_tensorrt(kinds, fp16=fp16, timing_cache=timing_cache.expanduser(),
                                             step=progress.step)
    except (TensorRTError, RepositoryError, OSError) as exc:
        raise CommandError(f"{exc}; the ONNX entries were written, no TensorRT entry was") from None
    for report in trt_reports:
        _report(report)


if __name__ == "__main__":
    main()
