"""The install stage: pip commands that give a bare CUDA machine's Python the project and what the stages import.

The host's torch stays (its CUDA build is what the stages measure); onnxruntime-gpu
replaces the CPU onnxruntime (both provide the ``onnxruntime`` module). With
``--wheels`` the project and a folder of wheels are installed offline instead.
"""
from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path

from benchmarks.gpu_check.commands import CheckFailed, CommandFailed, run_command, shell
from benchmarks.gpu_check.settings import ROOT, Settings


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirement_name(requirement: str) -> str:
    for stop in "<>=!~[; ":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower()


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None."""
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
    # The project itself is installed already; an extra that names it (dev: "ddn-serve[train,...]") would pull
    # train's pinned torch back past the constraint below, and the extras the stages need are listed here.
    requirements = [r for r in requirements if _requirement_name(r) != project["name"]]
    held = []
    if installed_version("torch") is not None:  # keep the host's torch: its CUDA build is what the GPU stages measure
        requirements = [r for r in requirements if _requirement_name(r) != "torch"]
        held = ["--constraint", str(settings.work / "constraints.txt")]
    gpu_ort = next(r for r in extras["gpu"] if _requirement_name(r) == "onnxruntime-gpu")
    return [editable, [*pip, *held, *requirements],
            [settings.python, "-m", "pip", "uninstall", "-y", "onnxruntime"],
            [*pip, "--force-reinstall", "--no-deps", gpu_ort]]


def stage_install(settings: Settings) -> dict:
    """Run every install command, even after one fails; the result lists each with its outcome."""
    if installed_version("torch") is not None:
        (settings.work / "constraints.txt").write_text(f"torch=={installed_version('torch')}\n")
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
