"""Triton gRPC client for DDN models served from a ``ddn-export`` repository, on one server or several.

    client = DDNClient("localhost:8001", model="mnist")
    images = client.generate(seeds=range(16))          # uint8 [16, H, W, C]
    fleet = DDNClient(["gpu1:8001", "gpu2:8001"], model="mnist")

Requests are checked before they leave the process, split into the model's batch size, resent or hedged
on another endpoint when a server fails or hangs, and returned in request order, so the output is the same
bytes whichever server answered. Failures raise :class:`ServingError` with a one-line message.
docs/serving.md describes the checks, routing and retries in full.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from ddn.codes import codes_from_seed, validate_codes
from ddn.conditions import ConditionError, condition_spec
from ddn.repository_contract import GraphLayout, RepositoryError, TensorSpec, entry_name, identity_parameters

from .dns_names import Resolver, system_resolver
from .endpoints import Endpoint, EndpointPool, NoEndpointError, one_line, parse_urls, retryable
from .tls_probe import http_port_hint, tls_mismatch_hint


log = logging.getLogger(__name__)


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
    versions: tuple[str, ...] = ()

    def identity(self) -> dict[str, object]:
        """What must agree between two servers of this model (asked for by name) for them to give the same bytes."""
        return {"versions": ",".join(self.versions), **identity_parameters(self.parameters),
                "max_batch_size": self.max_batch_size, "inputs": self.inputs, "outputs": self.outputs}

    @property
    def layout(self) -> GraphLayout:
        """L, K per layer and image shape, from the config's ``ddn_*`` parameters."""
        try:
            return GraphLayout.from_parameters(self.parameters)
        except RepositoryError as exc:
            raise ServingError(f"model {self.name!r} has {exc}") from None


def _channel_args(probe_interval_s: float) -> list[tuple[str, int]]:
    """tritonclient's message limits, and reconnect backoff held at the probe interval.

    gRPC's own backoff grows to two minutes, so a channel to a server that was
    down for a while would not even try to connect when a probe asks whether
    it is back; held at the interval, each probe really reconnects.
    """
    backoff_ms = max(100, int(probe_interval_s * 1000))
    return [("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.initial_reconnect_backoff_ms", backoff_ms), ("grpc.min_reconnect_backoff_ms", backoff_ms),
            ("grpc.max_reconnect_backoff_ms", backoff_ms)]


class DDNClient:
    """Generate, encode and condition through the gRPC endpoints of one or more Triton servers.

    ``url`` is ``host:port``, a comma list, a sequence of them, or ``dns:///host:port`` for every address
    of a name; ``model`` is the ``ddn-export --name`` and ``variant`` an entry suffix such as ``"_trt"``.
    The other arguments bound batch size, requests in flight, timeouts, retries, probing, hedging
    (``hedge_max_s``; None: none) and set TLS; docs/serving.md ("DDNClient options") explains each.
    """

    def __init__(self, url: str | Sequence[str] = "localhost:8001", model: str = "ddn", concurrency: int = 8,
                 batch_size: int | None = None, timeout_s: float = 30.0, connect_timeout_s: float = 5.0,
                 variant: str = "", retries: int = 3, probe_interval_s: float = 1.0, tls: bool = False,
                 root_certificates: str | Path | None = None, resolver: Resolver = system_resolver,
                 resolve_interval_s: float = 10.0, hedge_max_s: float | None = 1.0):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if hedge_max_s is not None and hedge_max_s <= 0:
            raise ValueError(f"hedge_max_s must be > 0 or None, got {hedge_max_s}")
        if resolve_interval_s <= 0:
            raise ValueError(f"resolve_interval_s must be > 0, got {resolve_interval_s}")
        if root_certificates is not None and not Path(root_certificates).is_file():
            raise FileNotFoundError(f"root certificate not found: {root_certificates}")
        self.urls = parse_urls(url)
        self.model = model
        self.variant = variant
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retries = retries
        self.tls = tls or root_certificates is not None
        self.root_certificates = None if root_certificates is None else str(root_certificates)
        channel_args = _channel_args(probe_interval_s)
        self._pool = EndpointPool(self.urls, lambda u: grpcclient.InferenceServerClient(
            u, ssl=self.tls, root_certificates=self.root_certificates, channel_args=channel_args),
            probe_interval_s=probe_interval_s, probe_timeout_s=connect_timeout_s, resolver=resolver,
            resolve_interval_s=resolve_interval_s, hedge_max_s=hedge_max_s or timeout_s)  # connects on first use
        self.hedging = hedge_max_s is not None
        self._infos: dict[str, ModelInfo] = {}
        self._info_lock = threading.Lock()
        self._retried_lock = threading.Lock()
        self.retried = 0  # requests sent again after a retryable failure, over the client's life
        self.hedged = 0  # requests also sent to another endpoint because the first was overdue
        self._warned: set[str] = set()

    @property
    def url(self) -> str:
        """The endpoints, as messages name them."""
        return ", ".join(self.urls)

    # -- model discovery ---------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        """The generation graph's config and metadata (read from the servers on first use)."""
        return self.model_info(self.graph("generate"))

    @property
    def layout(self) -> GraphLayout:
        """The generation graph's L, K per layer and image shape."""
        return self.info.layout

    def graph(self, kind: str) -> str:
        """The served name of one of this model's graphs (ddn-export's naming)."""
        return entry_name(self.model, kind, self.variant)

    def endpoint_stats(self) -> list[dict]:
        """Per endpoint: url, healthy, in_flight, succeeded, failed, hedged, ejections, last_error."""
        return self._pool.stats()

    def available_models(self) -> list[str]:
        """Names of the models a healthy endpoint has loaded and ready."""
        endpoint = self._healthy_endpoints()[0]
        return self._call(endpoint, lambda: self._served_models(endpoint), "list models")

    def _served_models(self, endpoint: Endpoint) -> list[str]:
        index = endpoint.client.get_model_repository_index(as_json=True, client_timeout=self.connect_timeout_s)
        return sorted(m["name"] for m in index.get("models", []) if m.get("state") == "READY")

    def model_info(self, name: str) -> ModelInfo:
        """Config and metadata of ``name`` (cached), the same on every healthy endpoint.

        ServingError listing the served models if no endpoint serves it, and
        naming both endpoints and what differs if two serve different models.
        """
        with self._info_lock:
            if name in self._infos:
                return self._infos[name]
            answers: list[tuple[Endpoint, ModelInfo | None]] = []
            for endpoint in self._healthy_endpoints():
                try:
                    answers.append((endpoint, self._read_info(endpoint, name)))
                except InferenceServerException as exc:
                    if not retryable(exc):
                        raise ServingError(f"{endpoint.url}: could not read model {name!r}: {one_line(exc)}") \
                            from None
                    self._pool.eject(endpoint, one_line(exc))
            if not answers:
                raise ServingError(self._unreachable_message())
            served = [(e, info) for e, info in answers if info is not None]
            if not served:
                endpoint = answers[0][0]
                available = self._call(endpoint, lambda: self._served_models(endpoint), "list models")
                raise ServingError(f"model {name!r} is not served by {self.url}; available models: "
                                   f"{', '.join(available) or '(none)'}")
            reference_endpoint, reference = served[0]
            for endpoint, info in answers:
                _check_same_model(name, reference_endpoint, reference, endpoint, info)
                self._pool.mark_verified(endpoint, name)
            self._infos[name] = reference
            return reference

    def _read_info(self, endpoint: Endpoint, name: str) -> ModelInfo | None:
        """``name`` as ``endpoint`` serves it; None if it has no such model ready."""
        client, timeout = endpoint.client, self.connect_timeout_s
        if not client.is_model_ready(name, client_timeout=timeout):
            return None
        config = client.get_model_config(name, as_json=True, client_timeout=timeout)["config"]
        meta = client.get_model_metadata(name, as_json=True, client_timeout=timeout)
        batched = int(config.get("max_batch_size", 0)) > 0

        def specs(entries: Iterable[dict]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(e["name"], np.dtype(triton_to_np_dtype(e["datatype"])),
                                    tuple(int(d) for d in e["shape"][1 if batched else 0:]))
                         for e in entries)

        return ModelInfo(name=name, max_batch_size=int(config.get("max_batch_size", 0)),
                         inputs=specs(meta.get("inputs", [])), outputs=specs(meta.get("outputs", [])),
                         parameters={k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()},
                         versions=tuple(meta.get("versions", [])))

    def _healthy_endpoints(self) -> list[Endpoint]:
        """The endpoints that answer now; probes all of them on first use; ServingError if none does."""
        try:
            self._pool.start()
        except NoEndpointError:
            raise ServingError(self._unreachable_message()) from None
        healthy = self._pool.healthy()
        if not healthy:
            raise ServingError(self._unreachable_message())
        return healthy

    def _unreachable_message(self) -> str:
        stats = self._pool.stats()
        if len(stats) == 1 and not self._pool.names:
            message = f"cannot reach the Triton server at {self.url} (gRPC): {stats[0]['last_error']}"
        else:
            message = f"cannot reach any Triton server at {self.url} (gRPC): {self._pool.errors()}"
        hints = [hint for url in self.urls for hint in (http_port_hint(url, self.connect_timeout_s),
                                                        tls_mismatch_hint(url, self.tls, self.connect_timeout_s))]
        return "; ".join([message, *filter(None, hints)])

    def _endpoint_for(self, model: str, deadline: float, avoid: Endpoint | None) -> Endpoint:
        """An endpoint for the next request of ``model``, checked against the reference model first."""
        def claim() -> Endpoint:
            try:
                return self._pool.acquire(deadline, avoid)
            except NoEndpointError as exc:
                raise ServingError(f"no Triton server answered within {self.timeout_s:g} s: {exc}") from None

        endpoint = self._checked(model, claim)
        assert endpoint is not None  # acquire waits for one or raises
        return endpoint

    def _spare_for(self, model: str, busy: list[Endpoint]) -> Endpoint | None:
        """A healthy endpoint outside ``busy`` for a copy of an overdue request, checked like any; None if none."""
        return self._checked(model, lambda: self._pool.acquire_spare(busy))

    def _checked(self, model: str, claim: Callable[[], Endpoint | None]) -> Endpoint | None:
        """The first endpoint ``claim`` gives that serves the reference ``model`` (checked on its first use).

        One that cannot be read is ejected, one that serves another model is
        left out with a warning; then ``claim`` is asked again.
        """
        while True:
            endpoint = claim()
            if endpoint is None or self._pool.is_verified(endpoint, model):
                return endpoint
            try:
                info = self._read_info(endpoint, model)
            except InferenceServerException as exc:
                self._pool.release(endpoint, exc)
                if not retryable(exc):
                    raise ServingError(f"{endpoint.url}: could not read model {model!r}: {one_line(exc)}") from None
                continue
            reference_endpoint = next((e for e in self._pool.endpoints if self._pool.is_verified(e, model)), None)
            try:
                _check_same_model(model, reference_endpoint, self._infos[model], endpoint, info)
            except ServingError as exc:
                # A server that joins later cannot change which model the run uses: leave it out, go on.
                self._pool.unclaim(endpoint)
                self._pool.eject(endpoint, str(exc))
                self._warn_once(f"{exc}; {endpoint.url} is left out")
                continue
            self._pool.mark_verified(endpoint, model)
            return endpoint

    def _warn_once(self, message: str) -> None:
        """Log ``message`` as a warning the first time (a refused endpoint is re-checked at every rejoin)."""
        if message not in self._warned:
            self._warned.add(message)
            log.warning("warning: %s", message)

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

    def condition_layout(self, kind: str) -> GraphLayout:
        """The layout of condition ``kind``'s graph ``<model>_<kind>`` (its input shapes follow from it)."""
        return self.model_info(self.graph(kind)).layout

    def conditional(self, kind: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Zero-shot conditional generation on the ``<model>_<kind>`` graph: ``images`` and ``codes`` by name.

        ``kind`` and the inputs are a condition of :data:`ddn.conditions.CONDITIONS`, e.g.
        ``conditional("superres", low_res=x)`` or ``conditional("inpaint", image=x, mask=m)`` (mask 0/1).
        Inputs are checked against the condition's schema before anything is
        sent, with the message :class:`ddn.serving.onnx_model.OnnxModel` gives.
        """
        try:
            spec = condition_spec(kind)
            arrays = spec.check(self.condition_layout(kind), inputs)
        except ConditionError as exc:
            raise ServingError(str(exc)) from None
        return self.infer(self.graph(kind), arrays)

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
        results = self._run_chunks(model, [{name: array[start:stop] for name, array in arrays.items()}
                                           for start, stop in chunks], names)
        return {n: np.concatenate([r[n] for r in results], axis=0) for n in names}

    def _run_chunks(self, model: str, chunks: list[dict[str, np.ndarray]],
                    names: list[str]) -> list[dict[str, np.ndarray]]:
        """Every chunk's outputs, in order: at most ``concurrency`` in flight, failed or overdue ones resent elsewhere.

        A chunk may have several copies in flight (on different endpoints): the
        first answer is its result and the others are cancelled. A failure
        counts only once no copy of the chunk is left.
        """
        results: list[dict[str, np.ndarray] | None] = [None] * len(chunks)
        attempts = [0] * len(chunks)
        last_endpoint: list[Endpoint | None] = [None] * len(chunks)
        pending = deque(range(len(chunks)))
        live: dict[int, list[_Copy]] = {}  # chunk -> its copies in flight
        finished: queue.SimpleQueue = queue.SimpleQueue()
        failure = None

        def send(index: int, endpoint: Endpoint) -> None:
            copy = _Copy(index, endpoint, time.monotonic())
            live.setdefault(index, []).append(copy)
            copy.context = self._send(endpoint, model, chunks[index], names,
                                      lambda result, error: self._copy_done(copy, result, error, finished))

        while live or (pending and failure is None):
            while pending and failure is None and len(live) < self.concurrency:
                index = pending.popleft()
                try:
                    endpoint = self._endpoint_for(model, time.monotonic() + self.timeout_s, last_endpoint[index])
                except ServingError as exc:
                    failure = str(exc)
                    break
                last_endpoint[index] = endpoint
                send(index, endpoint)
            if failure is not None or not live:
                break
            try:
                copy, result, error = finished.get(timeout=self._hedge_wait(live))
            except queue.Empty:
                copy = None
            if copy is not None and not copy.withdrawn:
                index = copy.chunk
                live[index].remove(copy)
                if error is None:
                    results[index] = {n: result.as_numpy(n) for n in names}
                    _withdraw(live.pop(index))
                elif live[index]:
                    pass  # another copy is still out; it may answer
                elif retryable(error) and attempts[index] < self.retries:
                    del live[index]
                    attempts[index] += 1
                    with self._retried_lock:
                        self.retried += 1
                    pending.appendleft(index)
                else:
                    del live[index]
                    tries = f" (after {attempts[index] + 1} attempts)" if attempts[index] else ""
                    failure = f"{model} at {copy.endpoint.url}: {one_line(error)}{tries}"
            if self._can_hedge():
                self._hedge_overdue(model, live, send)
        for copies in live.values():  # only after a failure: nobody waits for these any more
            _withdraw(copies)
        if failure is not None:
            raise ServingError(failure)
        return results

    def _copy_done(self, copy: _Copy, result, error: InferenceServerException | None,
                   finished: queue.SimpleQueue) -> None:
        """gRPC's callback for one copy: the endpoint's books first (also after the call returned), then the call."""
        if copy.withdrawn:
            self._pool.unclaim(copy.endpoint)  # cancelled by us: says nothing about the endpoint
        else:
            self._pool.release(copy.endpoint, error, time.monotonic() - copy.sent_at)
        finished.put((copy, result, error))

    def _can_hedge(self) -> bool:
        """Hedging is on and there may be more than one server to hedge between."""
        return self.hedging and (len(self._pool.endpoints) > 1 or bool(self._pool.names))

    def _hedge_wait(self, live: dict[int, list[_Copy]]) -> float | None:
        """Seconds until the next copy becomes overdue (None: wait for an answer however long it takes)."""
        if not self._can_hedge():
            return None
        due = [c.sent_at + c.endpoint.hedge_after_s for copies in live.values() for c in copies if not c.hedged]
        if not due:
            return None
        wait = min(due) - time.monotonic()
        # Past due and still here: no spare endpoint was free; look again shortly. Also catches copies
        # stranded on an endpoint that another call just ejected.
        return min(wait + 0.001, HEDGE_POLL_S) if wait > 0 else HEDGE_POLL_S

    def _hedge_overdue(self, model: str, live: dict[int, list[_Copy]], send) -> None:
        """Send a copy of each chunk that is overdue, or whose copies are all on ejected endpoints, to a spare.

        An overdue copy counts against its endpoint (:meth:`EndpointPool.note_overdue`)
        only when there is a spare to hedge to: a lone slow server is not hung.
        """
        now = time.monotonic()
        for index, copies in live.items():
            busy = [c.endpoint for c in copies]
            stranded = not any(e.healthy for e in busy)
            overdue = [c for c in copies if not c.hedged and now >= c.sent_at + c.endpoint.hedge_after_s]
            if not (stranded or overdue) or not self._pool.has_spare(busy):
                continue
            for copy in overdue:
                copy.hedged = True
                self._pool.note_overdue(copy.endpoint)
            spare = self._spare_for(model, busy)
            if spare is not None:
                with self._retried_lock:
                    self.hedged += 1
                send(index, spare)

    def _send(self, endpoint: Endpoint, model: str, chunk: dict[str, np.ndarray], names: list[str], callback):
        """One asynchronous request; ``callback(result, error)`` runs once, also if sending itself fails.

        Returns tritonclient's call context (to cancel it), None if sending failed.
        """
        request = []
        for name, array in chunk.items():
            part = np.ascontiguousarray(array)
            tensor = grpcclient.InferInput(name, list(part.shape), np_to_triton_dtype(part.dtype))
            tensor.set_data_from_numpy(part)
            request.append(tensor)
        try:
            return endpoint.client.async_infer(model, request, callback=callback, client_timeout=self.timeout_s,
                                               outputs=[grpcclient.InferRequestedOutput(n) for n in names])
        except InferenceServerException as exc:
            callback(None, exc)
            return None

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

    def _call(self, endpoint: Endpoint, fn, what: str):
        try:
            return fn()
        except InferenceServerException as exc:
            if retryable(exc):
                self._pool.eject(endpoint, one_line(exc))
            raise ServingError(f"{endpoint.url}: could not {what}: {one_line(exc)}") from None

    # -- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> "DDNClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


HEDGE_POLL_S = 0.1  # how often a call with copies in flight looks for overdue ones at most


@dataclass(eq=False)
class _Copy:
    """One copy of a chunk's request, in flight on one endpoint."""

    chunk: int
    endpoint: Endpoint
    sent_at: float  # monotonic
    context: object | None = None  # tritonclient's CallContext, to cancel a copy that lost
    withdrawn: bool = False  # cancelled because another copy answered first
    hedged: bool = False  # overdue, and a copy went to another endpoint


def _withdraw(copies: list[_Copy]) -> None:
    """Cancel copies nobody waits for (they hand their endpoints back in their callbacks)."""
    for copy in copies:
        copy.withdrawn = True
        if copy.context is not None:
            copy.context.cancel()


def _check_same_model(name: str, reference_endpoint: Endpoint | None, reference: ModelInfo, endpoint: Endpoint,
                      info: ModelInfo | None) -> None:
    """ServingError naming both endpoints and the first difference if ``endpoint`` serves another ``name``."""
    where = reference_endpoint.url if reference_endpoint is not None else "the endpoints checked before"
    if info is None:
        raise ServingError(f"endpoints serve different models: {name!r} is served by {where} but not by "
                           f"{endpoint.url}; every endpoint must serve the same export")
    want, got = reference.identity(), info.identity()
    for key in [*want, *(k for k in got if k not in want)]:
        if want.get(key) != got.get(key):
            raise ServingError(f"endpoints serve different models: {name!r} has {key} {want.get(key)!r} on {where} "
                               f"but {got.get(key)!r} on {endpoint.url}; every endpoint must serve the same export")
