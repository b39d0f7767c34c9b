"""Generation speed on this machine's CPU: the exported graph against PyTorch and the peers a user would try.

Every method runs the same codes at each batch size in interleaved rounds, and its images are compared
with ONNX Runtime's; docs/benchmarks.md lists the methods.

Usage: python -m benchmarks.generate_speed [--batches 1,64] [--seconds 4] [--rounds 5] [--threads N]
                                           [--baseline-onnx OLD.onnx] [--save-onnx NEW.onnx] [--no-compile]
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import click
import numpy as np
import onnx
import torch
from torch import nn

from benchmarks.measure import BenchmarkRun, Method, interleaved, matmul_peak_gflops, summarize
from benchmarks.measured_model import MODEL_CONFIG, measured_model
from ddn.export.graphs import GenerateGraph
from ddn.export.onnx_export import export_onnx, operator_counts
from ddn.repository_contract import onnxruntime_session
from ddn.training.networks import DDNGenerator


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


def openvino_calls(path: Path, threads: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """OpenVINO on the ONNX file at fp32 and with its bf16 precision hint; empty when OpenVINO is not installed."""
    try:
        import openvino
    except ImportError:
        return {}
    core = openvino.Core()
    model = core.read_model(str(path))
    calls = {}
    for precision in ("f32", "bf16"):
        compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                     "INFERENCE_PRECISION_HINT": precision})
        request = compiled.create_infer_request()
        calls[f"openvino_{precision.replace('f32', 'fp32')}"] = (
            lambda codes, request=request: request.infer({"codes": codes})["images"])
    return calls


def onnx_methods(path: Path, baseline: Path | None, threads: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The exported graph on ONNX Runtime (and the baseline graph), then OpenVINO: codes -> images uint8."""
    calls = {}
    for name, file in (("onnxruntime", path), ("onnxruntime_baseline", baseline)):
        if file is not None:
            session = onnxruntime_session(file, threads)
            calls[name] = lambda codes, session=session: session.run(["images"], {"codes": codes})[0]
    return {**calls, **openvino_calls(path, threads)}


def onnxruntime_ms_by_operator(path: Path, codes: np.ndarray, threads: int, folder: Path, calls: int = 5) -> dict:
    """Where ONNX Runtime's time goes in the exported graph at one batch: kernel milliseconds per call by operator
    type, as ORT runs the graph after its own optimisations (NCHWc reorders, fused activations), from its profiler
    over ``calls`` calls after a warm-up call.
    """
    session = onnxruntime_session(path, threads, profile_prefix=folder / f"profile_{len(codes)}")
    for _ in range(calls + 1):
        session.run(["images"], {"codes": codes})
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    warm_until = runs[0][1]  # microseconds from the profiler's start: the warm-up call's end
    totals: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] > warm_until:
            op = event["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + event["dur"] / 1000 / calls
    kernel_ms = sum(totals.values())
    return {"kernel_ms_per_call": round(kernel_ms, 2),
            "by_operator": {op: {"ms": round(ms, 2), "share": round(ms / kernel_ms, 3)}
                            for op, ms in sorted(totals.items(), key=lambda item: -item[1]) if ms >= 0.005}}


def compiled_graph(generator: DDNGenerator) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.compile of the graph module ddn-export freezes (codes -> images uint8); compiles on first call."""
    compiled = torch.compile(GenerateGraph(generator), dynamic=False)

    def call(codes: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return compiled(codes)[0]
    return call


def batch_methods(generator: DDNGenerator, codes: np.ndarray, onnx_calls: dict, compiled: Callable | None,
                  threads: int) -> tuple[dict[str, Method], dict[str, np.ndarray], dict[str, float]]:
    """Every method at one batch: (timed calls, images each returned, first-call seconds, compilation included)."""
    codes_long, codes_int = torch.from_numpy(codes).long(), torch.from_numpy(codes)
    plain = {"pytorch_all_k": pytorch_call(generator, codes_long, all_k=True),
             "pytorch_gathered": pytorch_call(generator, codes_long, all_k=False)}
    methods: dict[str, Method] = {}
    images: dict[str, np.ndarray] = {}
    first_call_s: dict[str, float] = {}

    def threaded(call: Callable[[], object]) -> Method:
        return Method(call, prepare=lambda: torch.set_num_threads(threads))

    for name, call in plain.items():
        methods[name] = threaded(call)
    if compiled is not None:
        methods["pytorch_compiled"] = threaded(lambda: compiled(codes_int))
    for name, call in onnx_calls.items():
        methods[name] = Method(lambda call=call: call(codes))
    for name, method in methods.items():
        method.prepare()
        start = time.perf_counter()
        out = method.call()
        first_call_s[name] = round(time.perf_counter() - start, 2)
        if name in plain:  # float [-1, 1] NCHW -> uint8 NHWC, as the exported graph rounds
            out = torch.round((out.clamp(-1, 1).permute(0, 2, 3, 1) + 1) * 127.5).to(torch.uint8)
        images[name] = out.numpy() if torch.is_tensor(out) else np.asarray(out)
    return methods, images, first_call_s


def batch_row(batch: int, times: dict[str, list[float]], images: dict[str, np.ndarray], flop: dict[str, float],
              peak: float) -> dict[str, dict]:
    """Per method: latency, images/s, share of the matmul peak and uint8 levels from ONNX Runtime's images."""
    reference = images["onnxruntime"].astype(np.int16)
    row = {}
    for name, calls in times.items():
        entry = summarize(batch, calls)
        gflops = flop[name] * entry["images_per_s"] / 1e9
        entry.update(achieved_gflops=round(gflops, 1), fraction_of_matmul_peak=round(gflops / peak, 3),
                     max_uint8_levels_vs_onnxruntime=int(np.abs(images[name].astype(np.int16) - reference).max()))
        row[name] = entry
    ours = row["onnxruntime"]["images_per_s"]
    row["onnxruntime_speedup_over"] = {name: round(ours / entry["images_per_s"], 2)
                                       for name, entry in row.items() if name != "onnxruntime"}
    return row


@click.command()
@click.option("--batches", default="1,64", show_default=True, help="Comma-separated batch sizes.")
@click.option("--seconds", type=float, default=4.0, show_default=True,
              help="Timing budget per method and batch size, over all rounds.")
@click.option("--rounds", type=int, default=5, show_default=True, help="Interleaved rounds per batch size.")
@click.option("--threads", type=int, default=0, help="Threads of every method (0: every core).")
@click.option("--baseline-onnx", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A generation graph of the same model exported earlier, timed beside the fresh export.")
@click.option("--save-onnx", type=click.Path(dir_okay=False, path_type=Path),
              help="Keep the fresh export here (a baseline for a later run).")
@click.option("--compile/--no-compile", "use_compile", default=True, show_default=True,
              help="Include torch.compile of the gathered graph (compiling takes a minute or two).")
def main(batches: str, seconds: float, rounds: int, threads: int, baseline_onnx: Path | None,
         save_onnx: Path | None, use_compile: bool) -> None:
    run = BenchmarkRun()
    threads = threads or torch.get_num_threads()
    generator = measured_model().eval()
    sizes = [int(b) for b in batches.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        path = save_onnx or Path(folder) / "model.onnx"
        start = time.perf_counter()
        export_onnx(GenerateGraph(generator), path, max_batch=max(sizes))
        export_s = time.perf_counter() - start
        operators = {"onnxruntime": operator_counts(onnx.load(str(path)))}
        if baseline_onnx is not None:
            operators["onnxruntime_baseline"] = operator_counts(onnx.load(str(baseline_onnx)))
        onnx_calls = onnx_methods(path, baseline_onnx, threads)

        macs = multiply_adds_per_image(generator)
        gathered_flop = 2 * (macs["blocks"] + macs["head_gathered"])
        flop = {name: gathered_flop for name in ("pytorch_gathered", "pytorch_compiled", *onnx_calls)}
        flop["pytorch_all_k"] = 2 * (macs["blocks"] + macs["head_all_k"])
        peaks = matmul_peak_gflops([threads], seconds)
        compiled = compiled_graph(generator) if use_compile else None
        rng = np.random.default_rng(0)
        results, first_calls, profiles = {}, {}, {}
        for batch in sizes:
            codes = rng.integers(0, generator.branch_counts, (batch, generator.num_layers)).astype(np.int32)
            methods, images, first_calls[str(batch)] = batch_methods(generator, codes, onnx_calls, compiled, threads)
            times = interleaved(methods, seconds, rounds)
            results[str(batch)] = batch_row(batch, times, images, flop, peaks["peak"])
            profiles[str(batch)] = onnxruntime_ms_by_operator(path, codes, threads, Path(folder))

    notes = [] if any(name.startswith("openvino") for name in onnx_calls) else [
        "OpenVINO not installed (pip install 'ddn-serve[bench]'): its rows are missing"]
    report = run.report(
        model={**MODEL_CONFIG, "num_layers": generator.num_layers,
               "parameters": sum(p.numel() for p in generator.parameters())},
        threads=threads, seconds_per_method=seconds, rounds=rounds,
        matmul_gflops_fp32=peaks,
        multiply_adds_per_image={**macs, "total_all_k": macs["blocks"] + macs["head_all_k"],
                                 "total_gathered": macs["blocks"] + macs["head_gathered"]},
        export_seconds=round(export_s, 1), onnx_operators=operators,
        first_call_seconds=first_calls, batches=results, onnxruntime_profile=profiles, notes=notes)
    click.echo(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
