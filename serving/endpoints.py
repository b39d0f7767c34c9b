"""Several Triton gRPC endpoints used as one: least-in-flight routing, ejection, re-probing.

Each request goes to the healthy endpoint with the fewest requests in flight
(ties: the one picked longest ago). An endpoint that fails a request in a way
that says nothing about the request (see :func:`retryable`) or fails a health
probe is ejected: it takes no requests, and ``probe_interval_s`` later a
background thread asks it whether it is ready; when it is, it rejoins. A
server that was not up when the client started is simply ejected from the
start, so it joins once it answers. Requests never wait for a probe of a dead
endpoint while another one is healthy.

The pool decides where a request goes and whether a failure may be retried;
the caller (:class:`ddn.serving.client.DDNClient`) resends it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

# Failures that say nothing about the request itself: the endpoint is gone (UNAVAILABLE: refused, reset,
# killed), hung (DEADLINE_EXCEEDED), overloaded or broken. The same request may succeed elsewhere.
# Everything else (a refused input, an unknown model) would fail on every endpoint alike.
RETRYABLE_STATUS = frozenset({
    "StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED",
    "StatusCode.CANCELLED", "StatusCode.ABORTED", "StatusCode.INTERNAL", "StatusCode.UNKNOWN",
})


def retryable(error: InferenceServerException) -> bool:
    """Whether ``error`` may be retried on another endpoint with the same request."""
    return error.status() in RETRYABLE_STATUS


def one_line(error: InferenceServerException) -> str:
    text = error.message() or str(error)
    return " ".join(text.split())


def parse_urls(urls: str | Sequence[str]) -> tuple[str, ...]:
    """Endpoints from one URL, a comma list, or several of either; ValueError on none or a repeat."""
    items = [urls] if isinstance(urls, str) else list(urls)
    parsed = [strip_scheme(part.strip()) for item in items for part in item.split(",") if part.strip()]
    if not parsed:
        raise ValueError("no Triton endpoint given")
    repeated = sorted({url for url in parsed if parsed.count(url) > 1})
    if repeated:
        raise ValueError(f"endpoint {repeated[0]} is given more than once")
    return tuple(parsed)


def strip_scheme(url: str) -> str:
    for scheme in ("grpc://", "http://", "https://"):
        if url.startswith(scheme):
            return url[len(scheme):]
    return url


@dataclass(eq=False)
class Endpoint:
    """One server as the pool sees it. Fields change only under the pool's lock."""

    url: str
    client: grpcclient.InferenceServerClient
    healthy: bool = False
    in_flight: int = 0
    probe_due: float = 0.0  # monotonic time of the next probe while ejected
    probing: bool = False
    last_error: str = "not probed yet"
    verified: set[str] = field(default_factory=set)  # models checked against the reference since it (re)joined
    last_pick: int = -1
    succeeded: int = 0
    failed: int = 0
    ejections: int = 0


class NoEndpointError(RuntimeError):
    """No endpoint is healthy: at start, or for longer than a request may wait."""


class EndpointPool:
    """Endpoints of one model; thread-safe. Nothing is contacted before :meth:`start`."""

    def __init__(self, urls: Sequence[str], connect: Callable[[str], grpcclient.InferenceServerClient],
                 probe_interval_s: float = 1.0, probe_timeout_s: float = 5.0):
        self.endpoints = [Endpoint(url, connect(url)) for url in urls]
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        self._lock = threading.Condition()
        self._start_lock = threading.Lock()
        self._started = False
        self._picks = 0
        self._closed = False

    # -- health ----------------------------------------------------------------------
    def start(self) -> None:
        """Probe every endpoint at once (first use); NoEndpointError if none is ready.

        After a failed start the next call probes again, so a client pointed at
        servers that are all down fails fast every time instead of waiting.
        """
        with self._start_lock:
            if self._started:
                return
            threads = [threading.Thread(target=self._probe, args=(e,), daemon=True) for e in self.endpoints]
            with self._lock:
                for endpoint in self.endpoints:
                    endpoint.probing = True
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            with self._lock:
                if not any(e.healthy for e in self.endpoints):
                    raise NoEndpointError(self._errors())
            self._started = True

    def _probe(self, endpoint: Endpoint) -> None:
        """Ask ``endpoint`` whether it is ready; it (re)joins if so, else is probed again later."""
        error = None
        try:
            if not endpoint.client.is_server_ready(client_timeout=self.probe_timeout_s):
                error = "server not ready"
        except InferenceServerException as exc:
            error = one_line(exc)
        except Exception as exc:  # a closed client, a broken channel: never kill the probe thread silently
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            endpoint.probing = False
            if error is None:
                endpoint.healthy = True
            else:
                self._mark_ejected(endpoint, error)
            self._lock.notify_all()

    def _mark_ejected(self, endpoint: Endpoint, error: str) -> None:
        if endpoint.healthy:
            endpoint.ejections += 1
        endpoint.healthy = False
        endpoint.verified.clear()  # whatever answers there next must be checked again
        endpoint.last_error = error
        endpoint.probe_due = time.monotonic() + self.probe_interval_s

    def eject(self, endpoint: Endpoint, error: str) -> None:
        """Take ``endpoint`` out of rotation until a probe finds it ready."""
        with self._lock:
            self._mark_ejected(endpoint, error)
            self._lock.notify_all()

    def _launch_due_probes(self) -> None:
        now = time.monotonic()
        for endpoint in self.endpoints:
            if not endpoint.healthy and not endpoint.probing and endpoint.probe_due <= now and not self._closed:
                endpoint.probing = True
                threading.Thread(target=self._probe, args=(endpoint,), daemon=True).start()

    def _errors(self) -> str:
        return "; ".join(f"{e.url}: {e.last_error}" for e in self.endpoints)

    # -- routing -----------------------------------------------------------------------
    def healthy(self) -> list[Endpoint]:
        with self._lock:
            self._launch_due_probes()
            return [e for e in self.endpoints if e.healthy]

    def is_verified(self, endpoint: Endpoint, model: str) -> bool:
        with self._lock:
            return model in endpoint.verified

    def mark_verified(self, endpoint: Endpoint, model: str) -> None:
        """``endpoint`` serves the reference ``model`` (until it is next ejected)."""
        with self._lock:
            if endpoint.healthy:
                endpoint.verified.add(model)

    def acquire(self, deadline: float, avoid: Endpoint | None = None) -> Endpoint:
        """The healthy endpoint with the fewest requests in flight (not ``avoid`` if another is healthy).

        Counts the request as in flight there; hand it back with :meth:`release`.
        With no endpoint healthy it waits for a probe to bring one back, until
        ``deadline`` (monotonic), then raises NoEndpointError.
        """
        with self._lock:
            while True:
                self._launch_due_probes()
                healthy = [e for e in self.endpoints if e.healthy]
                candidates = [e for e in healthy if e is not avoid] or healthy
                if candidates:
                    best = min(candidates, key=lambda e: (e.in_flight, e.last_pick))
                    best.in_flight += 1
                    best.last_pick = self._picks
                    self._picks += 1
                    return best
                now = time.monotonic()
                if now >= deadline:
                    raise NoEndpointError(self._errors())
                due = [e.probe_due for e in self.endpoints if not e.probing]
                self._lock.wait(max(0.01, min([deadline, *due]) - now))

    def release(self, endpoint: Endpoint, error: InferenceServerException | None) -> None:
        """A request on ``endpoint`` finished; a retryable ``error`` ejects the endpoint."""
        with self._lock:
            endpoint.in_flight -= 1
            if error is None:
                endpoint.succeeded += 1
            else:
                endpoint.failed += 1
                if retryable(error) and endpoint.healthy:
                    self._mark_ejected(endpoint, one_line(error))
            self._lock.notify_all()

    def unclaim(self, endpoint: Endpoint) -> None:
        """Hand back an endpoint from :meth:`acquire` that was sent nothing."""
        with self._lock:
            endpoint.in_flight -= 1
            self._lock.notify_all()

    def stats(self) -> list[dict]:
        """Per endpoint: url, healthy, in_flight, succeeded, failed, ejections, last_error."""
        with self._lock:
            return [{"url": e.url, "healthy": e.healthy, "in_flight": e.in_flight, "succeeded": e.succeeded,
                     "failed": e.failed, "ejections": e.ejections, "last_error": e.last_error}
                    for e in self.endpoints]

    def close(self) -> None:
        with self._lock:
            self._closed = True
        for endpoint in self.endpoints:
            endpoint.client.close()
