"""Triton gRPC client for DDN models served from a ``ddn-export`` repository.

    client = DDNClient("localhost:8001", model="mnist")
    images = client.generate(seeds=range(16))          # uint8 [16, H, W, C]
    codes = client.encode(images)                       # int32 [16, L]
    out = client.conditional("superres", low_res=small) # {"images": ..., "codes": ...}

Constructing a client talks to nobody. On first use of a model it reads the
model's config (``ddn_*`` parameters, see :class:`ddn.repository_contract.GraphLayout`;
max_batch_size) and metadata (input/output names, dtypes, shapes) once; it
checks every request against them before it leaves the process (codes through
:func:`ddn.codes.validate_codes`), splits requests larger than the model's
max batch size into chunks that run concurrently (at most ``concurrency`` in
flight) and puts the results back together in request order. Failures raise
:class:`ServingError` with a one-line message.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from ddn.codes import codes_from_seed, validate_codes
from ddn.repository_contract import GraphLayout, RepositoryError, TensorSpec, entry_name

# gRPC status of a call that never reached a server (nothing listening, or no answer in time).
_UNREACHABLE = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")


class ServingError(RuntimeError):
    """A request the server or the client refused, or a server that cannot be reached."""


@dataclass(frozen=True)
class ModelInfo:
    """What the client knows about one served model."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: Mapping[str, str]

    @property
    def layout(self) -> GraphLayout:
        """L, K per layer and image shape, from the config's ``ddn_*`` parameters."""
        try:
            return GraphLayout.from_parameters(self.parameters)
        except RepositoryError as exc:
            raise ServingError(f"model {self.name!r} has {exc}") from None


def _one_line(exc: InferenceServerException) -> str:
    text = exc.message() or str(exc)
    return " ".join(text.split())


def _strip_scheme(url: str) -> str:
    for scheme in ("grpc://", "http://", "https://"):
        if url.startswith(scheme):
            return url[len(scheme):]
    return url


class DDNClient:
    """Generate, encode and condition through a Triton server's gRPC endpoint.

    ``model`` is the generation graph's name (``ddn-export --name``); the
    encoder and conditional graphs are found as ``<model>_encode`` and
    ``<model>_<kind>``. ``variant`` picks another entry of the same graphs
    by suffix, e.g. ``"_trt"`` for the TensorRT entries (``<model>_trt``,
    ``<model>_encode_trt``) on a GPU server. ``batch_size`` caps the rows per
    request (default: the model's max_batch_size); ``concurrency`` bounds
    requests in flight. ``timeout_s`` bounds each inference request,
    ``connect_timeout_s`` each call that reads the server's models (the first
    of them is where an unreachable server shows).
    """

    def __init__(self, url: str = "localhost:8001", model: str = "ddn", concurrency: int = 8,
                 batch_size: int | None = None, timeout_s: float = 60.0, connect_timeout_s: float = 5.0,
                 variant: str = ""):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.url = url
        self.model = model
        self.variant = variant
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._client = grpcclient.InferenceServerClient(_strip_scheme(url))  # connects on the first call
        self._infos: dict[str, ModelInfo] = {}

    # -- model discovery ---------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        """The generation graph's config and metadata (read from the server on first use)."""
        return self.model_info(self.graph("generate"))

    @property
    def layout(self) -> GraphLayout:
        """The generation graph's L, K per layer and image shape."""
        return self.info.layout

    def graph(self, kind: str) -> str:
        """The served name of one of this model's graphs (ddn-export's naming)."""
        return entry_name(self.model, kind, self.variant)

    def available_models(self) -> list[str]:
        """Names of the models the server has loaded and ready."""
        index = self._call(lambda: self._client.get_model_repository_index(
            as_json=True, client_timeout=self.connect_timeout_s), "list models")
        return sorted(m["name"] for m in index.get("models", []) if m.get("state") == "READY")

    def model_info(self, name: str) -> ModelInfo:
        """Config and metadata of ``name`` (cached); ServingError listing the served models if unknown."""
        if name in self._infos:
            return self._infos[name]
        available = self.available_models()
        if name not in available:
            raise ServingError(f"model {name!r} is not served by {self.url}; available models: "
                               f"{', '.join(available) or '(none)'}")
        config = self._call(lambda: self._client.get_model_config(
            name, as_json=True, client_timeout=self.connect_timeout_s), f"read config of {name!r}")["config"]
        meta = self._call(lambda: self._client.get_model_metadata(
            name, as_json=True, client_timeout=self.connect_timeout_s), f"read metadata of {name!r}")
        batched = int(config.get("max_batch_size", 0)) > 0

        def specs(entries: Iterable[dict]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(e["name"], np.dtype(triton_to_np_dtype(e["datatype"])),
                                    tuple(int(d) for d in e["shape"][1 if batched else 0:]))
                         for e in entries)

        info = ModelInfo(name=name, max_batch_size=int(config.get("max_batch_size", 0)),
                         inputs=specs(meta.get("inputs", [])), outputs=specs(meta.get("outputs", [])),
                         parameters={k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()})
        self._infos[name] = info
        return info

    # -- DDN operations ------------------------------------------------------------
    def codes_for_seeds(self, seeds: int | Sequence[int]) -> np.ndarray:
        """The codes [B, L] the project's seed rule gives for ``seeds`` on this model."""
        layout = self.layout
        return codes_from_seed(seeds, layout.num_layers, layout.branch_counts)

    def generate(self, seeds: int | Sequence[int] | None = None, codes: np.ndarray | None = None,
                 output: str = "images") -> np.ndarray:
        """Images for seeds (through the seed rule) or for codes [B, L]: uint8 [B, H, W, C] by default.

        ``output="images_float"`` returns the float32 [-1, 1] variant.
        Codes are checked (shape, integer dtype, range) before anything is sent.
        """
        if (seeds is None) == (codes is None):
            raise ValueError("generate() takes exactly one of seeds or codes")
        if seeds is not None:
            codes = self.codes_for_seeds(seeds)
        else:
            layout = self.layout
            try:
                codes = validate_codes(codes, layout.num_layers, layout.branch_counts)
            except ValueError as exc:
                raise ServingError(f"{self.info.name}: {exc}") from None
        return self.infer(self.info.name, {"codes": codes}, [output])[output]

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Codes int32 [B, L] of the guided path towards uint8 images [B, H, W, C]."""
        name = self.graph("encode")
        return self.infer(name, {self._only_input(name): images}, ["codes"])["codes"]

    def conditional(self, kind: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Zero-shot conditional generation on the ``<model>_<kind>`` graph; all its outputs by name.

        e.g. ``conditional("superres", low_res=x)`` or ``conditional("inpaint", image=x, mask=m)``.
        """
        return self.infer(self.graph(kind), inputs)

    # -- the request engine ----------------------------------------------------------
    def infer(self, model: str, inputs: Mapping[str, np.ndarray],
              outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run ``model`` on batched inputs of any size; outputs (all by default) in input order.

        The batch is cut into requests of at most ``batch_size`` (capped by the
        model's max_batch_size) rows; up to ``concurrency`` are in flight.
        """
        info = self.model_info(model)
        arrays = self._check_inputs(info, inputs)
        names = self._check_outputs(info, outputs)
        batch = next(iter(arrays.values())).shape[0]
        if batch == 0:
            return {s.name: np.zeros((0, *s.shape), s.dtype) for s in info.outputs if s.name in names}
        step = min(self.batch_size or info.max_batch_size, info.max_batch_size) if info.max_batch_size else batch
        chunks = [(start, min(start + step, batch)) for start in range(0, batch, step)]
        results: list[dict[str, np.ndarray] | None] = [None] * len(chunks)
        errors: list[str] = []
        slots = threading.BoundedSemaphore(self.concurrency)
        finished = threading.Semaphore(0)

        def on_done(index: int, result, error) -> None:
            try:
                if error is not None:
                    errors.append(_one_line(error))
                else:
                    results[index] = {n: result.as_numpy(n) for n in names}
            finally:
                slots.release()
                finished.release()

        sent = 0
        for index, (start, stop) in enumerate(chunks):
            slots.acquire()
            if errors:  # stop sending once one chunk failed; the batch fails as a whole
                slots.release()
                break
            request = []
            for name, array in arrays.items():
                part = np.ascontiguousarray(array[start:stop])
                tensor = grpcclient.InferInput(name, list(part.shape), np_to_triton_dtype(part.dtype))
                tensor.set_data_from_numpy(part)
                request.append(tensor)
            try:
                self._client.async_infer(
                    model, request, callback=lambda result, error, i=index: on_done(i, result, error),
                    outputs=[grpcclient.InferRequestedOutput(n) for n in names], client_timeout=self.timeout_s)
            except InferenceServerException as exc:
                slots.release()
                errors.append(_one_line(exc))
                break
            sent += 1
        for _ in range(sent):
            finished.acquire()
        if errors:
            raise ServingError(f"{model} at {self.url}: {errors[0]}")
        return {n: np.concatenate([r[n] for r in results], axis=0) for n in names}

    def _check_inputs(self, info: ModelInfo, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        expected = {s.name: s for s in info.inputs}
        if set(inputs) != set(expected):
            raise ServingError(f"{info.name} takes inputs {sorted(expected)}, got {sorted(inputs)}")
        arrays, batches = {}, set()
        for name, value in inputs.items():
            spec, array = expected[name], np.asarray(value)
            if array.dtype != spec.dtype:
                raise ServingError(f"{info.name}: input {name!r} must be {spec.dtype}, got {array.dtype}")
            sample = array.shape[1:]
            if array.ndim != len(spec.shape) + 1 or any(d != -1 and d != s for d, s in zip(spec.shape, sample)):
                shape = ", ".join(str(d) if d != -1 else "?" for d in spec.shape)
                raise ServingError(f"{info.name}: input {name!r} must have shape [B, {shape}], got {list(array.shape)}")
            arrays[name] = array
            batches.add(array.shape[0])
        if len(batches) > 1:
            raise ServingError(f"{info.name}: inputs have different batch sizes {sorted(batches)}")
        return arrays

    @staticmethod
    def _check_outputs(info: ModelInfo, outputs: Sequence[str] | None) -> list[str]:
        available = [s.name for s in info.outputs]
        if outputs is None:
            return available
        unknown = [n for n in outputs if n not in available]
        if unknown:
            raise ServingError(f"{info.name} has no output {unknown[0]!r}; its outputs are {available}")
        return list(outputs)

    def _only_input(self, model: str) -> str:
        specs = self.model_info(model).inputs
        if len(specs) != 1:
            raise ServingError(f"{model} takes {len(specs)} inputs {[s.name for s in specs]}; use conditional()")
        return specs[0].name

    def _call(self, fn, what: str):
        try:
            return fn()
        except InferenceServerException as exc:
            if exc.status() in _UNREACHABLE:
                raise ServingError(f"cannot reach the Triton server at {self.url} (gRPC): {_one_line(exc)}") from None
            raise ServingError(f"{self.url}: could not {what}: {_one_line(exc)}") from None

    # -- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "DDNClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
