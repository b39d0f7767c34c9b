"""Build a TensorRT 10 engine from an exported ONNX graph and check it against ONNX Runtime; needs ``tensorrt`` and a
CUDA GPU, and :func:`missing_requirements` names what is absent so ``ddn-export --trt`` stops with one line.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ddn.repository_contract import onnxruntime_session

from .onnx_export import VerificationError, compare_outputs

WORKSPACE_BYTES = 1 << 30


class TensorRTError(RuntimeError):
    """The engine could not be built or does not match ONNX Runtime."""


def missing_requirements() -> list[str]:
    """What ``--trt`` needs and this machine lacks (empty when a build can start)."""
    missing = []
    if not torch.cuda.is_available():
        reason = "this PyTorch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
        missing.append(f"a CUDA GPU ({reason})")
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("the tensorrt package (pip install 'ddn-serve[gpu]')")
    return missing


def build_engine(onnx_path: Path, max_batch: int, fp16: bool = False, timing_cache: Path | None = None,
                 workspace_bytes: int = WORKSPACE_BYTES) -> bytes:
    """Serialized engine (a Triton ``model.plan``) for ``onnx_path``, dynamic batch 1..max_batch."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        # TF32 (on by default on Ampere and later) rounds matmul inputs to 10 mantissa bits:
        # enough to flip a guided argmin or move a pixel by more than one level.
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        sample = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (1, *sample), (max_batch, *sample), (max_batch, *sample))
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"TensorRT could not build an engine for {onnx_path.name} (see the log above)")
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


class EngineRunner:
    """Runs a serialized engine on CUDA tensors; outputs come back as numpy arrays by name."""

    def __init__(self, plan: bytes):
        import tensorrt as trt

        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise TensorRTError("TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt = self._trt
        device = torch.device("cuda")
        keep = []  # the CUDA tensors must outlive the launch
        for name in self.input_names:
            tensor = torch.from_numpy(np.ascontiguousarray(inputs[name])).to(device)
            keep.append(tensor)
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise TensorRTError(f"input {name!r} shape {list(tensor.shape)} is outside the engine's profile")
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.output_names:
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            shape = tuple(self.context.get_tensor_shape(name))
            tensor = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, device=device)
            outputs[name] = tensor
            self.context.set_tensor_address(name, tensor.data_ptr())
        # The stream the copies above were queued on, so the engine sees finished inputs.
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise TensorRTError("TensorRT execution failed")
        stream.synchronize()
        del keep
        return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}


def verify_engine(plan: bytes, onnx_path: Path, example_inputs: Sequence[dict[str, np.ndarray]],
                  fp16: bool = False) -> dict:
    """Compare the engine with ONNX Runtime on the same inputs; returns the max abs errors. fp32 engines get the ONNX
    tolerances, fp16 ones 0.05 on floats and 7 uint8 levels.
    """
    runner = EngineRunner(plan)
    session = onnxruntime_session(onnx_path)
    float_atol, levels = (0.05, 7) if fp16 else (1e-3, 1)
    max_errors: dict[str, float] = {}
    for inputs in example_inputs:
        reference = dict(zip(runner.output_names, session.run(runner.output_names, inputs)))
        try:
            errors = compare_outputs(reference, runner(inputs), float_atol, levels)
        except VerificationError as exc:
            raise TensorRTError(f"TensorRT engine differs from ONNX Runtime: {exc}") from None
        for name, error in errors.items():
            max_errors[name] = max(error, max_errors.get(name, 0.0))
    return {"backend": f"tensorrt {_trt_version()}", "fp16": fp16, "max_abs_error": max_errors,
            "batch_sizes": [int(next(iter(x.values())).shape[0]) for x in example_inputs]}


def _trt_version() -> str:
    import tensorrt as trt

    return trt.__version__
