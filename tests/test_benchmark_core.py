"""The benchmarks' measuring core (rounds, percentiles, the report) and how generate_speed and serve_load use it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.measure import CPU_FLAGS, BenchmarkRun, Method, Samples, interleaved, summarize

ROOT = Path(__file__).resolve().parents[1]


def test_rounds_interleave_the_methods_and_rotate_which_goes_first():
    calls: list[str] = []
    prepared: list[str] = []
    methods = {name: Method(lambda name=name: calls.append(name), prepare=lambda name=name: prepared.append(name))
               for name in "abc"}
    times = interleaved(methods, seconds=0, rounds=3, warmup_calls=1, min_calls=2)
    assert calls == list("abc") + list("aabbcc") + list("bbccaa") + list("ccaabb")  # warm-up, then 3 rounds
    assert prepared == list("abc") + list("abc") + list("bca") + list("cab")  # before the warm-up and every slice
    assert {name: (len(t.wall), len(t.cpu)) for name, t in times.items()} == {n: (6, 6) for n in "abc"}


def test_summary_reports_median_p99_and_images_per_second():
    times = Samples(wall=[0.010] * 98 + [0.020, 0.110], cpu=[0.004] * 100)
    summary = summarize(64, times)
    assert summary["cpu_ms"] == 4.0 and summary["images_per_cpu_s"] == 16000.0
    assert summary["latency_ms"] == 10.0 and summary["best_latency_ms"] == 10.0
    assert 20.0 < summary["p99_ms"] < 110.0
    assert summary["images_per_s"] == 6400.0 and summary["calls"] == 100


def test_report_names_the_command_date_machine_and_load():
    report = BenchmarkRun().report(answer=42)
    assert report["answer"] == 42
    assert report["machine"]["cores"] == os.cpu_count() and report["machine"]["torch"]
    # The vector extensions, as torch's own dispatch sees them (the kernels a speed-up was measured with).
    flags, capability = report["machine"]["cpu_flags"], torch.backends.cpu.get_cpu_capability()
    assert set(flags) <= set(CPU_FLAGS)
    assert ("avx2" in flags) >= capability.startswith("AVX")
    assert ("avx512f" in flags) >= (capability == "AVX512")
    assert len(report["load_average"]["before"]) == len(report["load_average"]["after"]) == 3
    assert report["date"].endswith("+00:00") and report["command"].startswith("python ")


def test_generate_speed_times_every_method_on_the_same_codes():
    done = subprocess.run([sys.executable, "-m", "benchmarks.generate_speed", "--batches", "2", "--seconds", "0.2",
                           "--rounds", "2", "--no-compile"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["command"] == "python -m benchmarks.generate_speed --batches 2 --seconds 0.2 --rounds 2 --no-compile"
    row = report["batches"]["2"]
    expected = {"pytorch_all_k", "pytorch_gathered", "onnxruntime"}
    assert expected <= set(row)
    assert ("openvino_fp32" in row) == (report["machine"]["openvino"] is not None)
    for name in expected:
        assert row[name]["calls"] >= 2 and row[name]["images_per_s"] > 0
        assert 0 < row[name]["fraction_of_matmul_peak"] < 3  # convolution kernels can beat torch's sgemm under load
        assert row[name]["max_uint8_levels_vs_onnxruntime"] <= 1  # the same images as the exported graph
    assert row["onnxruntime_speedup_over"]["pytorch_all_k"] == pytest.approx(
        row["onnxruntime"]["images_per_s"] / row["pytorch_all_k"]["images_per_s"], rel=0.02)
    # The exported graph reads the batch size once and reshapes by constants.
    assert report["onnx_operators"]["onnxruntime"].get("Shape", 0) <= 1
    profile = report["onnxruntime_profile"]["2"]  # where ONNX Runtime's time goes, by operator type
    assert profile["kernel_ms_per_call"] > 0 and profile["by_operator"]["Conv"]["ms"] > 0
    assert 0.8 < sum(entry["share"] for entry in profile["by_operator"].values()) <= 1.001


def test_serve_load_measures_its_slices_in_the_cores_rotating_rounds():
    from benchmarks.serve_load import interleaved_slices, merge, point, sweep_results

    calls: list[str] = []

    def slice_of(name: str, latency: float):
        def measure() -> dict:
            calls.append(name)
            return {"latencies": [latency], "failures": [], "elapsed": 1.0}
        return measure

    slices = {point("on", 1): slice_of("on", 0.002), point("off", 1): slice_of("off", 0.004),
              "baseline": slice_of("baseline", 0.001)}
    parts = interleaved_slices(slices, rounds=3)
    assert calls == ["on", "off", "baseline", "off", "baseline", "on", "baseline", "on", "off"]  # no warm-up slice
    assert sweep_results(parts, ["on", "off"], [1]) == {
        "on": [{"concurrency": 1, **merge(parts["on@1"])}], "off": [{"concurrency": 1, **merge(parts["off@1"])}]}
    assert merge(parts["off@1"])["requests"] == 3 and merge(parts["off@1"])["p50_ms"] == 4.0
    assert merge(parts["baseline"])["images_per_s"] == 1.0
