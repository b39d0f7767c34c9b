"""python -m benchmarks.gpu_check on a machine without a GPU: the dry run's plan and files, errors, the summary's targets."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import report as gpu_report
from benchmarks.gpu_check.runner import STAGE_NAMES
from benchmarks.gpu_check.settings import MODEL_ARGS

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str | Path) -> subprocess.CompletedProcess:
    """The check as a user runs it: as a module, from the checkout."""
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_dry_run_writes_the_skeleton_and_log_and_prints_every_command(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    done = run("--out", out, "--work", work, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    assert not work.exists()  # nothing is run, so nothing is made there
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True and list(report)[-1] == "summary"
    assert report["command"] == ["python", "-m", "benchmarks.gpu_check", "--out", str(out), "--work", str(work),
                                 "--dry-run"]
    assert list(report["stages"]) == list(STAGE_NAMES)
    for name, stage in report["stages"].items():
        assert stage["status"] == "planned" and stage["commands"] and stage["time_limit_s"] > 0, name
    assert all(target["value"] is None and target["met"] is None for target in report["summary"]["targets"].values())
    assert report["summary"]["all_targets_met"] is None
    assert (out / "gpu_check.log").read_text() == done.stdout  # the log holds the plan as printed

    plan = report["stages"]
    python = sys.executable
    install = plan["install"]["commands"]
    assert install[0] == f"{python} -m pip install --disable-pip-version-check --no-deps --no-build-isolation -e {ROOT}"
    assert "'onnxruntime-gpu>=1.19'" in install[1] and "'tensorrt>=10,<11'" in install[1]
    assert "'torch==" not in install[1] and f"--constraint {work / 'constraints.txt'}" in install[1]
    # The project is installed by the first command; naming it again (dev's "ddn-serve[train,...]") would bring
    # train's torch pin back past the constraint.
    assert "ddn-serve" not in install[1] and "'nvidia-pytriton>=0.5'" in install[1]
    assert install[2:] == [f"{python} -m pip uninstall -y onnxruntime",
                           f"{python} -m pip install --disable-pip-version-check --force-reinstall --no-deps "
                           "'onnxruntime-gpu>=1.19'"]
    model = " ".join(MODEL_ARGS)
    for precision in ("fp32", "bf16"):
        (train,) = plan[f"train_{precision}"]["commands"]
        assert train.startswith(f"{python} -m ddn.training.cli {model} --steps 200 ")
        assert f"--device cuda --precision {precision} --split-and-prune" in train
        assert train.endswith(f"--out {work / f'train_{precision}'}")
    fallback, export = plan["export_trt_fp16"]["commands"]
    assert fallback.startswith("(without a training checkpoint)") and "--steps 1 " in fallback and "--device cpu" in fallback
    assert export.startswith(f"{python} -m ddn.export.cli {work / 'train_fp32' / 'last.safetensors'} --name ddn ")
    assert "--max-batch 256" in export and export.endswith("--fp16") and " --trt " in export
    assert not plan["export_trt_fp32"]["commands"][1].endswith("--fp16")
    assert plan["gpu_tests"]["commands"] == [f"{python} -m pytest -m gpu -q -rs -p no:cacheprovider tests"]
    for line in (*install, export, "[serve] up to 120 s", "dry run: nothing installed or run"):
        assert line in done.stdout


def test_dry_run_with_wheels_installs_them_offline_and_skips_unselected_stages(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    names = ["onnxruntime_gpu-1.20.0-cp311-cp311-manylinux_2_27_x86_64.whl", "tritonclient-2.51.0-py3-none-any.whl"]
    for name in names:
        (wheels / name).write_bytes(b"")
    done = run("--out", tmp_path / "out", "--wheels", wheels, "--stages", "install,latency", "--dry-run")
    assert done.returncode == 0, done.stderr
    stages = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["stages"]
    python = sys.executable
    assert stages["install"]["commands"][1:] == [
        f"{python} -m pip uninstall -y onnxruntime",  # an onnxruntime-gpu wheel replaces the CPU build
        f"{python} -m pip install --disable-pip-version-check --no-index --no-deps "
        + " ".join(str(wheels / name) for name in names)]
    assert stages["latency"]["status"] == "planned"
    assert {name: stage["status"] for name, stage in stages.items() if name not in ("install", "latency")} == {
        name: "skipped" for name in STAGE_NAMES if name not in ("install", "latency")}
    assert stages["serve"]["reason"] == "not in --stages"

    done = run("--out", tmp_path / "out2", "--no-install", "--dry-run")
    assert done.returncode == 0, done.stderr
    stages = json.loads((tmp_path / "out2" / "gpu_check.json").read_text())["stages"]
    assert stages["install"] == {"status": "skipped", "reason": "--no-install", "does": "pip installs"}
    assert stages["train_fp32"]["status"] == "planned"


@pytest.mark.parametrize("args, message", [
    (["--stages", "train_fp32,bogus,train"], "--stages: unknown stage(s) bogus, train; choose from install,"),
    (["--stages", ","], "--stages: unknown stage(s) (none given)"),
    (["--budget-s", "0"], "--budget-s must be positive, got 0"),
    (["--budget-s", "soon"], "'soon' is not a valid float"),
    (["--serve-provider", "rocm"], "'rocm' is not one of 'cuda', 'tensorrt'"),
    (["--wheels", "{tmp}"], "holds no .whl files"),
    (["--no-install", "--wheels", "{wheel_dir}"], "--wheels installs, --no-install does not"),
    (["--out", "{file}"], "is a file; give a folder"),
    (["--frobnicate"], "No such option '--frobnicate'"),
])
def test_bad_arguments_are_one_line_errors_and_write_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "a_file").write_text("keep me")
    (tmp_path / "wheel_dir").mkdir()
    (tmp_path / "wheel_dir" / "x-1.0-py3-none-any.whl").write_bytes(b"")
    places = {"tmp": tmp_path, "file": tmp_path / "a_file", "wheel_dir": tmp_path / "wheel_dir"}
    args = [arg.format(**places) for arg in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    done = run(*args, "--dry-run")
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], done.stderr
    assert not (tmp_path / "out").exists() and (tmp_path / "a_file").read_text() == "keep me"


def test_missing_out_is_a_one_line_error(tmp_path: Path) -> None:
    done = run("--dry-run")
    assert done.returncode == 2 and done.stderr.strip() == "Error: Missing option '--out'."


def _stages(trt16: tuple[float, float], all_k: tuple[float, float], dynamic: float | None, off: float) -> dict:
    batches = {str(b): {"tensorrt_fp16": {"images_per_s": t}, "pytorch_all_k": {"images_per_s": a}}
               for b, t, a in zip((1, 64), trt16, all_k)}
    sweeps = {"dynamic_batching": [{"concurrency": 1, "images_per_s": 1.0}]
              + ([{"concurrency": 16, "images_per_s": dynamic}] if dynamic is not None else []),
              "no_batching": [{"concurrency": 1, "images_per_s": 1.0}, {"concurrency": 16, "images_per_s": off}]}
    return {"latency": {"status": "passed", "result": {"batches": batches}},
            "serve": {"status": "passed", "result": {"one_image_per_request": sweeps}},
            "gpu_tests": {"status": "failed", "error": "pytest -m gpu: 1 failed"}}


def test_summary_divides_the_measured_rates_and_checks_each_target() -> None:
    summary = gpu_report.summary(_stages(trt16=(1000.0, 9000.0), all_k=(200.0, 6000.0), dynamic=2700.0, off=900.0))
    targets = summary["targets"]
    assert targets["tensorrt_fp16_over_pytorch_all_k_batch_1"] == {"value": 5.0, "target": ">= 2", "met": True}
    assert targets["tensorrt_fp16_over_pytorch_all_k_batch_64"] == {"value": 1.5, "target": ">= 2", "met": False}
    assert targets["dynamic_batching_over_off_16_clients"] == {"value": 3.0, "target": ">= 2", "met": True}
    assert summary["all_targets_met"] is False
    assert summary["stages"] == {"latency": "passed", "serve": "passed", "gpu_tests": "failed"}

    summary = gpu_report.summary(_stages(trt16=(500.0, 500.0), all_k=(100.0, 100.0), dynamic=None, off=900.0))
    assert summary["targets"]["dynamic_batching_over_off_16_clients"]["value"] is None
    assert summary["all_targets_met"] is None  # a target that was not measured is not met or missed


def test_a_stage_without_time_left_is_skipped_without_starting(tmp_path: Path) -> None:
    done = run("--out", tmp_path / "out", "--work", tmp_path / "work", "--no-install", "--stages", "environment",
               "--budget-s", "5")
    assert done.returncode == 0, done.stderr
    stage = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["stages"]["environment"]
    assert stage["status"] == "skipped" and stage["reason"].startswith("out of time")
    assert not (tmp_path / "work" / "stages").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the training stage would run for real")
def test_a_failing_stage_is_recorded_with_its_error_and_the_run_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run("--out", out, "--work", tmp_path / "work", "--no-install", "--stages", "train_fp32,environment")
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    train = report["stages"]["train_fp32"]
    assert train["status"] == "failed" and train["seconds"] > 0
    assert train["error"] == ("python -m ddn.training.cli exited with 1: "
                              "Error: --device cuda was asked for but no CUDA device is available")
    environment = report["stages"]["environment"]  # the next stage still ran, and says why it fails
    assert environment["status"] == "failed" and environment["error"] == "torch sees no CUDA GPU"
    assert environment["result"]["cuda_available"] is False and environment["result"]["torch"] == torch.__version__
    assert report["summary"]["stages"]["train_fp32"] == "failed" and "finished" in report
    log = (out / "gpu_check.log").read_text()
    assert "Error: --device cuda was asked for but no CUDA device is available" in log
    assert "[train_fp32] failed" in done.stdout and "[environment] failed" in done.stdout
