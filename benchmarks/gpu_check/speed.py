"""The GPU check's two speed stages: generation latency per backend, and Triton serving with and without batching.

Latency is the median call between ``torch.cuda.synchronize()`` points after
uncounted warm-up calls; ONNX Runtime and TensorRT take codes from and return
images to host memory, PyTorch keeps both on the GPU (which can only favour the
baseline). Serving is measured with :mod:`benchmarks.serve_load`'s closed-loop
sweep in the measuring core's interleaved rounds.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Callable

from benchmarks.gpu_check.commands import CheckFailed
from benchmarks.gpu_check.settings import (LATENCY_BATCHES, LATENCY_SECONDS, NAME, SERVE_CONCURRENCY, SERVE_ROUNDS,
                                           SERVE_SLICE_S, WARMUP_CALLS, Settings)
from benchmarks.gpu_check.stages import checkpoint, entry_json, onnx_repository


def cuda_session(onnx_path: Path):
    """An ONNX Runtime session that really runs on the GPU (ORT would fall back to the CPU silently)."""
    import onnxruntime as ort

    from ddn.repository_contract import EXECUTION_PROVIDERS, onnxruntime_session

    if hasattr(ort, "preload_dlls"):  # the CUDA/cuDNN libraries of the nvidia-* wheels, if torch did not load them
        ort.preload_dlls()
    session = onnxruntime_session(onnx_path, providers=EXECUTION_PROVIDERS["cuda"])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"ONNX Runtime {ort.__version__} has no CUDA provider "
                           f"(it has {', '.join(ort.get_available_providers())}): install onnxruntime-gpu")
    return session


def _backends(settings: Settings, onnx_path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """ONNX Runtime's CUDA session and the fp32 and fp16 engines, and the error of each that cannot be made."""
    from ddn.export.tensorrt_build import EngineRunner

    runners: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def backend(name: str, make: Callable[[], Any]) -> None:
        try:
            runners[name] = make()
        except Exception as exc:  # one missing backend must not hide the others' numbers
            errors[name] = f"{type(exc).__name__}: {exc}"
            print(f"{name}: {errors[name]}", flush=True)

    backend("onnxruntime_cuda", lambda: cuda_session(onnx_path))
    for label, fp16 in (("tensorrt_fp32", False), ("tensorrt_fp16", True)):
        plan = settings.repository(fp16) / f"{NAME}_trt" / "1" / "model.plan"
        backend(label, lambda plan=plan: EngineRunner(plan.read_bytes()))
    return runners, errors


def _batch_calls(generator, runners: dict[str, Any], batch: int) -> dict[str, Callable[[], Any]]:
    """One call per method that generates ``batch`` images, each ending at a CUDA synchronisation."""
    import torch

    from benchmarks.generate_speed import pytorch_call
    from ddn.codes import codes_from_seed

    codes = codes_from_seed(range(batch), generator.num_layers, generator.branch_counts)
    codes_gpu = torch.from_numpy(codes).long().cuda()
    calls = {"pytorch_all_k": pytorch_call(generator, codes_gpu, all_k=True),
             "pytorch_gathered": pytorch_call(generator, codes_gpu, all_k=False)}
    if "onnxruntime_cuda" in runners:
        calls["onnxruntime_cuda"] = lambda s=runners["onnxruntime_cuda"]: s.run(["images"], {"codes": codes})[0]
    for label in ("tensorrt_fp32", "tensorrt_fp16"):
        if label in runners:
            calls[label] = lambda r=runners[label]: r({"codes": codes})["images"]

    def synchronized(call: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            out = call()
            torch.cuda.synchronize()
            return out
        return run

    return {method: synchronized(call) for method, call in calls.items()}


def _latency_row(calls: dict[str, Callable[[], Any]], batch: int) -> dict[str, dict]:
    """Each method's latency summary at ``batch``; the engines' largest difference from ONNX Runtime in levels."""
    import numpy as np

    from benchmarks.measure import summarize, time_calls

    row: dict[str, Any] = {}
    reference = calls["onnxruntime_cuda"]() if "onnxruntime_cuda" in calls else None
    for method, call in calls.items():
        for _ in range(WARMUP_CALLS):
            out = call()
        row[method] = summarize(batch, time_calls(call, LATENCY_SECONDS))
        if reference is not None and method.startswith("tensorrt"):
            row[method]["max_uint8_levels_vs_onnxruntime_cuda"] = int(
                np.abs(out.astype(np.int16) - reference.astype(np.int16)).max())
        print(f"batch {batch} {method}: {row[method]}", flush=True)
    return row


def stage_latency(settings: Settings) -> dict:
    """Latency and images/s per batch: PyTorch all-K and gathered, ONNX Runtime CUDA, TensorRT fp32 and fp16."""
    import torch

    from ddn.training.checkpoint import load_generator

    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA GPU")
    path, source = checkpoint(settings)
    generator = load_generator(path).cuda().eval()
    runners, errors = _backends(settings, onnx_repository(settings) / NAME / "1" / "model.onnx")
    batches = {str(batch): _latency_row(_batch_calls(generator, runners, batch), batch) for batch in LATENCY_BATCHES}
    return {"checkpoint": source, "gpu": torch.cuda.get_device_name(0), "batches": batches,
            "unavailable": errors, "warmup_calls": WARMUP_CALLS, "seconds_per_point": LATENCY_SECONDS}


SEED_CHECK = (0, 1, 2**63 - 1)


SEED_CHECK = (0, 1, 2**63 - 1)


def seed_entries_check(grpc_url: str, repository: Path) -> dict:
    """``NAME_seeds`` on a running server against ``NAME`` on the seed rule's codes; ``NAME_seeds_trt``'s steps."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    from ddn.codes import codes_from_seed
    from ddn.serving.repository_view import read_config

    client = grpcclient.InferenceServerClient(grpc_url)

    def images(model: str, name: str, array: np.ndarray) -> np.ndarray:
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        return client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput("images")]).as_numpy("images")

    info = entry_json(repository, NAME)
    by_seed = images(f"{NAME}_seeds", "seeds", np.array(SEED_CHECK, np.int64).reshape(-1, 1))
    by_codes = images(NAME, "codes", codes_from_seed(list(SEED_CHECK), info["num_layers"], info["branch_counts"]))
    result: dict[str, Any] = {"seeds": list(SEED_CHECK), "seeds_equal_codes": bool(np.array_equal(by_seed, by_codes))}
    if (repository / f"{NAME}_trt").is_dir():
        ensemble = repository / f"{NAME}_seeds_trt"
        result["seeds_trt_steps"] = ([step.model_name for step in read_config(ensemble).ensemble_scheduling.step]
                                     if ensemble.is_dir() else None)
    return result



def stage_serve(settings: Settings) -> dict:
    """Triton with the twins on ONNX Runtime's --serve-provider, batching on and off; the seed entries checked."""
    from benchmarks.serve_load import closed_loop, server_settings, sweep, sweep_results
    from ddn.codes import codes_from_seed
    from ddn.serving.repository_view import cpu_repository_view, cpu_settings, read_config
    from ddn.serving.triton_server import TritonServer

    repository = onnx_repository(settings)
    info = entry_json(repository, NAME)
    shape = tuple(info["image_shape"])
    codes = codes_from_seed(range(4096), info["num_layers"], info["branch_counts"])
    variants = {"dynamic_batching": cpu_settings(ort_provider=settings.serve_provider),
                "no_batching": cpu_settings(ort_provider=settings.serve_provider, dynamic_batching=False)}
    levels = list(SERVE_CONCURRENCY)
    configs = {}
    with contextlib.ExitStack() as stack:
        servers = {}
        for variant, edit in variants.items():
            print(f"starting the server with {variant}, provider {settings.serve_provider} ...", flush=True)
            view = stack.enter_context(cpu_repository_view(repository, edit))
            configs[variant] = server_settings(read_config(view / NAME))
            servers[variant] = stack.enter_context(TritonServer(view, startup_timeout=120))
            closed_loop(servers[variant], codes, max(levels), 1.0, NAME, shape)  # warm-up, not counted
        seeds = seed_entries_check(servers["dynamic_batching"].grpc_url, repository)
        parts = sweep(servers, codes, levels, SERVE_SLICE_S, SERVE_ROUNDS, model=NAME, image_shape=shape)
    sweeps = sweep_results(parts, list(variants), levels)
    print(json.dumps(sweeps, indent=2), flush=True)
    result = {"provider": settings.serve_provider, "server_config": configs, "rounds": SERVE_ROUNDS,
              "seconds_per_slice": SERVE_SLICE_S, "one_image_per_request": sweeps, "seed_entries": seeds}
    _check_seed_entries(seeds, result)
    return result


def _check_seed_entries(seeds: dict, result: dict) -> None:
    if not seeds["seeds_equal_codes"]:
        raise CheckFailed(f"{NAME}_seeds gives other images than {NAME} for the seed rule's codes", result)
    if seeds.get("seeds_trt_steps", [f"{NAME}_seed_codes", f"{NAME}_trt"]) != [f"{NAME}_seed_codes", f"{NAME}_trt"]:
        raise CheckFailed(f"{NAME}_seeds_trt runs {seeds['seeds_trt_steps']}, not {NAME}_seed_codes then {NAME}_trt",
                          result)
