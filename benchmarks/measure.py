"""The one measuring core of the benchmarks: timers, interleaved rounds, percentiles, the machine and the report.

Methods that are compared are timed in the same process in interleaved rounds
(round r starts with method r mod n), so load from other processes that comes
and goes during a run hits every method alike and the ratios between them stay
honest on a shared machine. Each report carries the command, the date, the
machine and the load average before and after the run.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

VERSIONED_PACKAGES = ("torch", "onnxruntime", "onnx", "openvino", "numpy")


@dataclass
class Method:
    """One thing to time: ``call`` runs it once; ``prepare`` runs before each of its slices (e.g. thread count)."""

    call: Callable[[], object]
    prepare: Callable[[], None] = field(default=lambda: None)


@dataclass
class Samples:
    """Per call: wall-clock seconds, and CPU seconds of this process (every thread; unlike the wall clock,
    barely moved by other processes' load when the method runs on one thread)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def extend(self, other: "Samples") -> None:
        self.wall += other.wall
        self.cpu += other.cpu


def time_calls(fn: Callable[[], object], seconds: float, min_calls: int = 3) -> list[float]:
    """Wall times of calls to ``fn`` over about ``seconds`` (at least ``min_calls``), after one warm-up call."""
    fn()
    return _timed_slice(fn, seconds, min_calls).wall


def _timed_slice(fn: Callable[[], object], seconds: float, min_calls: int) -> Samples:
    samples = Samples()
    deadline = time.perf_counter() + seconds
    while len(samples.wall) < min_calls or time.perf_counter() < deadline:
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        samples.cpu.append(time.process_time() - start_cpu)
        samples.wall.append(time.perf_counter() - start)
    return samples


def interleaved(methods: Mapping[str, Method | Callable[[], object]], seconds: float, rounds: int = 5,
                warmup_calls: int = 1, min_calls: int = 1) -> dict[str, Samples]:
    """Call times of every method: ``seconds`` each in all, split over ``rounds`` interleaved slices.

    Every method is warmed up first (``warmup_calls``, untimed); then each round
    gives every method one slice of ``seconds / rounds`` and at least
    ``min_calls`` calls (``seconds`` 0: exactly ``min_calls``), starting one
    method later than the round before.
    """
    wrapped = {name: m if isinstance(m, Method) else Method(m) for name, m in methods.items()}
    names = list(wrapped)
    for method in wrapped.values():
        method.prepare()
        for _ in range(warmup_calls):
            method.call()
    samples = {name: Samples() for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            method = wrapped[name]
            method.prepare()
            samples[name].extend(_timed_slice(method.call, seconds / rounds, min_calls))
    return samples


def summarize(batch: int, times: list[float] | Samples) -> dict[str, float]:
    """Latency percentiles (ms) and images/s at the median call, for calls of ``batch`` images.

    Given :class:`Samples`, also the median CPU time per call and the images per CPU second.
    """
    wall = times.wall if isinstance(times, Samples) else times
    p50, p99 = np.percentile(wall, [50, 99])
    summary = {"latency_ms": round(float(p50) * 1e3, 3), "p99_ms": round(float(p99) * 1e3, 3),
               "best_latency_ms": round(min(wall) * 1e3, 3), "images_per_s": round(batch / float(p50), 1),
               "calls": len(wall)}
    if isinstance(times, Samples):
        cpu = float(np.median(times.cpu))
        summary.update(cpu_ms=round(cpu * 1e3, 3), images_per_cpu_s=round(batch / cpu, 1) if cpu > 0 else None)
    return summary


def matmul_peak_gflops(thread_counts: list[int], seconds: float, sizes: tuple[int, ...] = (512, 1024, 2048)) -> dict:
    """This CPU's fp32 matmul rate: best call over n x n products (2 n^3 FLOP), torch per thread count and numpy.

    ``peak`` is torch's best at the thread counts given; numpy's BLAS picks its own thread count, so it is only listed.
    """
    import torch

    rates: dict[str, float] = {}
    threads_before = torch.get_num_threads()
    for n in sizes:
        a = torch.randn(n, n)
        b = a.numpy()
        for threads in thread_counts:
            torch.set_num_threads(threads)
            rate = 2 * n ** 3 / min(time_calls(lambda: torch.mm(a, a), seconds / len(sizes))) / 1e9
            rates[f"torch_{threads}_threads"] = max(rate, rates.get(f"torch_{threads}_threads", 0.0))
        rate = 2 * n ** 3 / min(time_calls(lambda: b @ b, seconds / len(sizes))) / 1e9
        rates["numpy"] = max(rate, rates.get("numpy", 0.0))
    torch.set_num_threads(threads_before)
    rounded = {name: round(rate, 1) for name, rate in rates.items()}
    return {**rounded, "peak": max(rate for name, rate in rounded.items() if name.startswith("torch"))}


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (how busy the machine was)."""
    return [round(x, 2) for x in os.getloadavg()]


# The vector extensions that decide which kernels oneDNN, MLAS and OpenVINO run: a speed-up measured on one CPU
# need not hold on another (the training step's 1.5x on one 2-core machine was 1.25x on an AVX2 one).
CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def _cpuinfo(field: str) -> str | None:
    """The first value of ``field`` in /proc/cpuinfo (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                name, _, value = line.partition(":")
                if name.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str] | None:
    """Which of CPU_FLAGS this CPU has (None where /proc/cpuinfo does not say)."""
    flags = _cpuinfo("flags")
    return None if flags is None else [flag for flag in CPU_FLAGS if flag in flags.split()]


def machine() -> dict[str, Any]:
    """CPU model and vector extensions, core count, Python and the versions of the packages the benchmarks time."""
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
            "python": platform.python_version(), **versions}


class BenchmarkRun:
    """Notes the date and load when a benchmark starts; :meth:`report` wraps its results with the context."""

    def __init__(self) -> None:
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.load_before = load_average()
        self.clock = time.perf_counter()

    def report(self, **results: Any) -> dict[str, Any]:
        module = sys.modules["__main__"].__spec__
        program = f"python -m {module.name}" if module is not None else f"python {sys.argv[0]}"
        return {"command": " ".join([program, *map(shlex.quote, sys.argv[1:])]),
                "date": self.started.isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - self.clock, 1),
                "machine": machine(),
                "load_average": {"before": self.load_before, "after": load_average()},
                **results}


def write_report(path: Path, report: Mapping[str, Any]) -> str:
    """Write ``report`` as indented JSON to ``path`` atomically (a killed run leaves the previous file); the text."""
    text = json.dumps(report, indent=2)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text + "\n")
    partial.replace(path)
    return text
