"""Generation speed on this machine's CPU: all-K PyTorch vs gathered-branch PyTorch vs the exported ONNX graph.

    python benchmarks/generate_speed.py [--batches 1,64] [--seconds 2]

Prints one JSON object. The model is the benchmarks' shared MNIST-sized
generator (:mod:`measured_model`), with random weights (speed does not depend
on training). All numbers come from one run:

* ``pytorch_all_k``: ``generator.run(..., all_k=True)``, every DDL computes all
  K candidates and keeps the chosen one (the leak from the chosen rows): what
  the official code computes;
* ``pytorch_gathered``: ``generator.run(...)``, each DDL gathers the chosen
  branch's rows and applies only those;
* ``onnxruntime``: the graph ``ddn-export`` writes (codes int32 -> images uint8),
  CPU execution provider, all graph optimisations.

Each method is timed alone (the others idle) for about ``--seconds`` per batch
size and thread count (1 and all cores); latency is the median call, images/s
is batch / median, and every method is credited with its faster thread count,
so a speedup never comes from a badly configured baseline. On a shared
machine other processes slow every method down, PyTorch's OpenMP threads most
(one thread can beat two there); the load average is reported for that reason.
Achieved GFLOP/s counts the convolution and matmul multiply-adds (2 FLOP each)
of the gathered graph, against the best fp32 matmul rate of this CPU measured
in the same run (torch at each thread count and numpy, n = 512, 1024, 2048; best call).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import click
import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from ddn.export.graphs import GenerateGraph
from ddn.export.onnx_export import export_onnx, operator_counts
from ddn.repository_contract import onnxruntime_session
from ddn.training.networks import DDNGenerator
from measured_model import MODEL_CONFIG, measured_model


def time_calls(fn: Callable[[], object], seconds: float, min_calls: int = 3) -> list[float]:
    """Wall times of calls to ``fn`` over about ``seconds`` (at least ``min_calls``), after one warm-up call."""
    fn()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def pytorch_call(generator: DDNGenerator, codes: torch.Tensor, all_k: bool) -> Callable[[], torch.Tensor]:
    """One generation call for ``codes`` [B, L]: every DDL computes all K candidates, or only the chosen one."""
    def call() -> torch.Tensor:
        with torch.inference_mode():
            return generator.run(len(codes), lambda layer: codes[:, layer], all_k=all_k)[0]
    return call


def multiply_adds_per_image(generator: DDNGenerator) -> dict[str, int]:
    """Multiply-adds of the blocks' convolutions and of the DDL heads, counted on one sampled walk.

    Head, gathered: the chosen rows on both halves of the features (image and
    leak). Head, all K: every branch's rows on the first half, plus the chosen
    rows on the second half for the leak, which is what the official code computes.
    """
    counts = {"blocks": 0, "head_gathered": 0, "head_all_k": 0}

    def conv(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        kernel = module.weight.shape[2] * module.weight.shape[3]
        if isinstance(module, nn.ConvTranspose2d):  # every input pixel feeds out_channels x kernel outputs
            counts["blocks"] += inputs[0][0].numel() * module.out_channels * kernel
        else:
            counts["blocks"] += output[0].numel() * module.in_channels // module.groups * kernel

    def head(module: nn.Module, inputs: tuple, output: tuple) -> None:
        k, rows, half = module.weight.shape
        pixels = inputs[0].shape[-1] * inputs[0].shape[-2]
        counts["head_gathered"] += 2 * rows * half * pixels
        counts["head_all_k"] += (k + 1) * rows * half * pixels

    hooks = [m.register_forward_hook(conv) for m in generator.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    hooks += [ddl.register_forward_hook(head) for ddl in generator.ddls()]
    try:
        generator.decode(np.zeros((1, generator.num_layers), dtype=np.int64))
    finally:
        for hook in hooks:
            hook.remove()
    return counts


def matmul_gflops(thread_counts: list[int], seconds: float, sizes: tuple[int, ...] = (512, 1024, 2048)) -> dict[str, float]:
    """This CPU's fp32 matmul rate: best call over n x n products (2 n^3 FLOP), torch per thread count and numpy."""
    rates: dict[str, float] = {}
    for n in sizes:
        a = torch.randn(n, n)
        b = a.numpy()
        for threads in thread_counts:
            torch.set_num_threads(threads)
            rate = 2 * n ** 3 / min(time_calls(lambda: torch.mm(a, a), seconds / len(sizes))) / 1e9
            rates[f"torch_{threads}_threads"] = max(rate, rates.get(f"torch_{threads}_threads", 0.0))
        rate = 2 * n ** 3 / min(time_calls(lambda: b @ b, seconds / len(sizes))) / 1e9
        rates["numpy"] = max(rate, rates.get("numpy", 0.0))
    return {name: round(rate, 1) for name, rate in rates.items()}


def summarize(batch: int, times: list[float]) -> dict[str, float]:
    median = statistics.median(times)
    return {"latency_ms": round(median * 1e3, 3), "best_latency_ms": round(min(times) * 1e3, 3),
            "images_per_s": round(batch / median, 1), "calls": len(times)}


@click.command()
@click.option("--batches", default="1,64", show_default=True, help="Comma-separated batch sizes.")
@click.option("--seconds", type=float, default=2.0, show_default=True,
              help="Timing budget per method, thread count and batch size.")
def main(batches: str, seconds: float) -> None:
    generator = measured_model().eval()
    sizes = [int(b) for b in batches.split(",")]
    cores = os.cpu_count() or 1
    thread_counts = sorted({1, cores})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        start = time.perf_counter()
        export_onnx(GenerateGraph(generator), path, max_batch=max(sizes))
        export_s = time.perf_counter() - start
        operators = operator_counts(onnx.load(str(path)))
        sessions = {threads: onnxruntime_session(path, threads) for threads in thread_counts}

    macs = multiply_adds_per_image(generator)
    gathered_flop = 2 * (macs["blocks"] + macs["head_gathered"])
    peaks = matmul_gflops(thread_counts, 2 * seconds)
    peak = max(peaks.values())
    rng = np.random.default_rng(0)
    results = {}
    for batch in sizes:
        codes = rng.integers(0, generator.branch_counts, (batch, generator.num_layers)).astype(np.int32)
        codes_torch = torch.from_numpy(codes).long()

        def prepare(method: str, threads: int) -> Callable[[], object]:
            """Set the thread count for ``method`` and return one call of it."""
            if method == "onnxruntime":
                return lambda: sessions[threads].run(["images"], {"codes": codes})
            torch.set_num_threads(threads)
            return pytorch_call(generator, codes_torch, all_k=method == "pytorch_all_k")

        row: dict[str, dict] = {}
        for method in ("pytorch_all_k", "pytorch_gathered", "onnxruntime"):
            per_threads = {}
            for threads in thread_counts:
                call = prepare(method, threads)
                time.sleep(0.2)  # let the previous method's worker threads go idle
                per_threads[str(threads)] = summarize(batch, time_calls(call, seconds))
            best = max(per_threads, key=lambda t: per_threads[t]["images_per_s"])
            row[method] = {"best_threads": int(best), **per_threads[best], "by_threads": per_threads}
        ort_rate = row["onnxruntime"]["images_per_s"]
        row["onnxruntime"]["achieved_gflops"] = round(gathered_flop * ort_rate / 1e9, 1)
        row["onnxruntime"]["fraction_of_matmul_peak"] = round(gathered_flop * ort_rate / 1e9 / peak, 3)
        row["speedup_onnxruntime_over_all_k"] = round(ort_rate / row["pytorch_all_k"]["images_per_s"], 2)
        row["speedup_gathered_over_all_k"] = round(
            row["pytorch_gathered"]["images_per_s"] / row["pytorch_all_k"]["images_per_s"], 2)
        results[str(batch)] = row
    torch.set_num_threads(cores)

    report = {
        "model": {**MODEL_CONFIG, "num_layers": generator.num_layers,
                  "parameters": sum(p.numel() for p in generator.parameters())},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": cores, "torch": torch.__version__,
                    "onnxruntime": ort.__version__, "load_average_1m": round(os.getloadavg()[0], 2)},
        "matmul_gflops_fp32": {**peaks, "peak_used": peak},
        "multiply_adds_per_image": {
            **macs,
            "head_ratio_all_k_over_gathered": round(macs["head_all_k"] / macs["head_gathered"], 2),
            "total_all_k": macs["blocks"] + macs["head_all_k"],
            "total_gathered": macs["blocks"] + macs["head_gathered"],
        },
        "export_seconds": round(export_s, 1),
        "onnx_operators": operators,
        "batches": results,
        "target_onnxruntime_2x_all_k": all(r["speedup_onnxruntime_over_all_k"] >= 2 for r in results.values()),
    }
    click.echo(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
