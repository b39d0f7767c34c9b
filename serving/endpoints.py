"""Several Triton gRPC endpoints used as one: least-in-flight routing, ejection, re-probing, hedging, DNS.

The pool decides where a request goes, when it is overdue and whether a failure may be retried; the
caller (:class:`ddn.serving.client.DDNClient`) sends it again. docs/serving.md describes the rules.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Collection, Sequence

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .dns_names import DnsName, Resolver, is_dns_target, parse_dns_target, system_resolver

# Failures that say nothing about the request itself: the endpoint is gone (UNAVAILABLE: refused, reset,
# killed), hung (DEADLINE_EXCEEDED), overloaded or broken. The same request may succeed elsewhere.
RETRYABLE_STATUS = frozenset({
    "StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED",
    "StatusCode.CANCELLED", "StatusCode.ABORTED", "StatusCode.INTERNAL", "StatusCode.UNKNOWN",
})
# What a server says while it dies or shuts down (its models unload before it stops listening). Requests only
# go to endpoints checked to serve the model, so on a request these say the endpoint lost it, not that the model
# does not exist; a model no endpoint serves is refused before any request (DDNClient.model_info).
LOST_MODEL_STATUS = frozenset({"StatusCode.NOT_FOUND"})
LOST_MODEL_MESSAGES = ("Request for unknown model", "has no available versions", "version not ready",
                       "is not ready", "Server is stopping")

HEDGE_FACTOR = 2.0  # a request is overdue after this many times its endpoint's p99 latency ...
HEDGE_MIN_S = 0.05  # ... but never sooner than this, nor later than the pool's hedge_max_s
LATENCY_WINDOW = 256  # recent latencies an endpoint's p99 is taken over
LATENCY_MIN_SAMPLES = 20  # fewer than this: the upper bound applies
HANG_LIMIT = 3  # overdue requests in a row that eject an endpoint as hung, if it also answered nothing for
# hedge_max_s (a busy server answers something in that time; a hung one nothing)


GRPC_PORT = 8001  # Triton's (and ddn-serve's) default gRPC port


def retryable(error: InferenceServerException) -> bool:
    """Whether ``error``, from an endpoint checked to serve the model, may be retried on another one.

    Everything else (a refused input: bad shape, bad dtype) would fail on every endpoint alike.
    """
    if error.status() in RETRYABLE_STATUS or error.status() in LOST_MODEL_STATUS:
        return True
    text = error.message() or str(error)
    return any(marker in text for marker in LOST_MODEL_MESSAGES)


def one_line(error: InferenceServerException) -> str:
    text = error.message() or str(error)
    return " ".join(text.split())


def parse_urls(urls: str | Sequence[str]) -> tuple[str, ...]:
    """Targets from one URL, a comma list, or several of either; ValueError on none, a repeat or a bad dns: name.

    ``host:port`` targets lose a ``grpc://``/``http(s)://`` scheme, and a host without a port gets Triton's gRPC
    port (gRPC itself would pick 443); ``dns:`` names are kept as given.
    """
    items = [urls] if isinstance(urls, str) else list(urls)
    parsed = [with_port(strip_scheme(part.strip())) for item in items for part in item.split(",") if part.strip()]
    if not parsed:
        raise ValueError("no Triton endpoint given")
    repeated = sorted({url for url in parsed if parsed.count(url) > 1})
    if repeated:
        raise ValueError(f"endpoint {repeated[0]} is given more than once")
    for target in parsed:
        if is_dns_target(target):
            parse_dns_target(target)
    return tuple(parsed)


def with_port(target: str) -> str:
    """``target`` with GRPC_PORT added when it names a host (``name``, ``1.2.3.4``, ``[::1]``) without a port."""
    if is_dns_target(target):
        return target
    _, sep, port = target.rpartition(":")
    return target if sep and port.isdigit() and not target.endswith("]") else f"{target}:{GRPC_PORT}"


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
    source: str = ""  # the target it came from: its own url, or the dns: name it was resolved from
    healthy: bool = False
    draining: bool = False  # its address left the DNS answer: no new requests, dropped once none is in flight
    in_flight: int = 0
    probe_due: float = 0.0  # monotonic time of the next probe while ejected
    probing: bool = False
    last_error: str = "not probed yet"
    verified: set[str] = field(default_factory=set)  # models checked against the reference since it (re)joined
    last_pick: int = -1
    succeeded: int = 0
    failed: int = 0
    ejections: int = 0
    overdue: int = 0  # requests in a row left unanswered past hedge_after_s (reset by any answer)
    answered_at: float = 0.0  # monotonic time of its last answer, or of its joining
    hedged: int = 0  # requests sent again elsewhere because this endpoint was overdue, over the pool's life
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    hedge_after_s: float = 1.0  # when a request here counts as overdue (the pool's hedge_max_s until it has answered)


class NoEndpointError(RuntimeError):
    """No endpoint is healthy: at start, or for longer than a request may wait."""


class EndpointPool:
    """Endpoints of one model; thread-safe. Nothing is contacted before :meth:`start`.

    ``targets`` are ``host:port`` or ``dns:///name:port`` (see :func:`parse_urls`);
    ``resolver`` resolves the dns: names (tests inject their own).
    ``hedge_max_s`` is the longest a request waits before it is overdue.
    """

    def __init__(self, targets: Sequence[str], connect: Callable[[str], grpcclient.InferenceServerClient],
                 probe_interval_s: float = 1.0, probe_timeout_s: float = 5.0, resolver: Resolver = system_resolver,
                 resolve_interval_s: float = 10.0, hedge_max_s: float = 1.0):
        self._connect = connect
        self.hedge_max_s = hedge_max_s
        self.names = [parse_dns_target(t) for t in targets if is_dns_target(t)]
        self.endpoints = [self._endpoint(t, t) for t in targets if not is_dns_target(t)]
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        self.resolver = resolver
        self.resolve_interval_s = resolve_interval_s
        self._stop = threading.Event()
        self._name_errors: dict[DnsName, str] = {}
        self._retired: list[Endpoint] = []  # drained endpoints whose clients are still to be closed
        self._lock = threading.Condition()
        self._start_lock = threading.Lock()
        self._started = False
        self._picks = 0
        self._closed = False

    # -- health ----------------------------------------------------------------------
    def start(self) -> None:
        """Resolve the dns: names and probe every endpoint at once (first use); NoEndpointError if none is ready.

        After a failed start the next call probes again, so a client pointed at
        servers that are all down fails fast every time instead of waiting.
        """
        with self._start_lock:
            if self._started:
                return
            if self.names:
                self._resolve()
            with self._lock:
                endpoints = [e for e in self.endpoints if not e.draining]
                for endpoint in endpoints:
                    endpoint.probing = True
            threads = [threading.Thread(target=self._probe, args=(e,), daemon=True) for e in endpoints]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            with self._lock:
                if not any(e.healthy for e in self.endpoints):
                    raise NoEndpointError(self.errors())
            self._started = True
            if self.names:
                threading.Thread(target=self._resolve_every_interval, daemon=True).start()

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
            if endpoint.draining:
                pass
            elif error is None:
                endpoint.healthy = True
                endpoint.overdue = 0
                endpoint.answered_at = time.monotonic()
            else:
                self._mark_ejected(endpoint, error)
            self._lock.notify_all()

    def _mark_ejected(self, endpoint: Endpoint, error: str) -> None:
        if endpoint.healthy:
            endpoint.ejections += 1
        endpoint.healthy = False
        endpoint.verified.clear()  # whatever answers there next must be checked again
        # ... and may be another process, or one still warming up: it gets the longest hedging delay until
        # it has answered enough requests to have a latency of its own.
        endpoint.latencies.clear()
        endpoint.hedge_after_s = self.hedge_max_s
        endpoint.last_error = error
        endpoint.probe_due = time.monotonic() + self.probe_interval_s

    def eject(self, endpoint: Endpoint, error: str) -> None:
        """Take ``endpoint`` out of rotation until a probe finds it ready."""
        with self._lock:
            self._mark_ejected(endpoint, error)
            self._lock.notify_all()

    def _launch_due_probes(self) -> None:
        if self._closed:
            return
        now = time.monotonic()
        for endpoint in self.endpoints:
            if not endpoint.healthy and not endpoint.draining and not endpoint.probing and endpoint.probe_due <= now:
                endpoint.probing = True
                threading.Thread(target=self._probe, args=(endpoint,), daemon=True).start()

    def errors(self) -> str:
        """Why each endpoint (and each dns: name that failed to resolve) is out: ``target: error; ...``."""
        with self._lock:
            return "; ".join([*(f"{name}: {error}" for name, error in self._name_errors.items()),
                              *(f"{e.url}: {e.last_error}" for e in self.endpoints if not e.draining)])

    # -- DNS -------------------------------------------------------------------------
    def _resolve_every_interval(self) -> None:
        while not self._stop.wait(self.resolve_interval_s):
            self._resolve()

    def _resolve(self) -> None:
        """Resolve every dns: name now; new addresses join (after a probe), vanished ones are drained.

        A name that fails to resolve keeps the endpoints it had: a DNS hiccup
        must not take a working fleet away.
        """
        answers: dict[DnsName, list[str]] = {}
        errors: dict[DnsName, str] = {}
        for name in self.names:
            try:
                answers[name] = name.endpoints(self.resolver)
            except Exception as exc:  # OSError (gaierror) from getaddrinfo; anything from an injected resolver
                errors[name] = f"cannot resolve {name.host}: {getattr(exc, 'strerror', None) or exc}"
        with self._lock:
            retired, self._retired = self._retired, []
            self._name_errors = errors
            known = {e.url for e in self.endpoints if not e.draining}
            new = [(url, str(name)) for name, urls in answers.items() for url in urls if url not in known]
            answered = {str(name): set(urls) for name, urls in answers.items()}
            for endpoint in self.endpoints:
                if endpoint.url not in answered.get(endpoint.source, {endpoint.url}):
                    endpoint.draining, endpoint.healthy = True, False
                    endpoint.last_error = "address left the DNS answer"
        for endpoint in retired:
            endpoint.client.close()
        added = [self._endpoint(url, source) for url, source in dict(new).items()]
        with self._lock:
            self.endpoints = [*self.endpoints, *added]  # a new list: readers may iterate the old one
            self._drop_drained()
            if self._started:
                self._launch_due_probes()  # new addresses are probed now, not at the next request
            self._lock.notify_all()

    def _endpoint(self, url: str, source: str) -> Endpoint:
        return Endpoint(url, self._connect(url), source=source, hedge_after_s=self.hedge_max_s)

    def _drop_drained(self) -> None:
        drained = [e for e in self.endpoints if e.draining and e.in_flight == 0]
        if drained:
            self.endpoints = [e for e in self.endpoints if e not in drained]
            self._retired.extend(drained)  # closed by the next resolution, never from a request's callback

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

    def _claim(self, candidates: list[Endpoint]) -> Endpoint:
        best = min(candidates, key=lambda e: (e.in_flight, e.last_pick))
        best.in_flight += 1
        best.last_pick = self._picks
        self._picks += 1
        return best

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
                    return self._claim(candidates)
                now = time.monotonic()
                if now >= deadline:
                    raise NoEndpointError(self.errors())
                due = [e.probe_due for e in self.endpoints if not e.probing and not e.draining]
                self._lock.wait(max(0.01, min([deadline, *due]) - now))

    def acquire_spare(self, exclude: Collection[Endpoint]) -> Endpoint | None:
        """Like :meth:`acquire`, among healthy endpoints not in ``exclude``; None at once if there is none."""
        with self._lock:
            spares = [e for e in self.endpoints if e.healthy and e not in exclude]
            return self._claim(spares) if spares else None

    def has_spare(self, exclude: Collection[Endpoint]) -> bool:
        """Whether a healthy endpoint outside ``exclude`` could take a copy of a request now."""
        with self._lock:
            self._launch_due_probes()
            return any(e.healthy and e not in exclude for e in self.endpoints)

    def release(self, endpoint: Endpoint, error: InferenceServerException | None, latency_s: float = 0.0) -> None:
        """A request on ``endpoint`` finished after ``latency_s``; a retryable ``error`` ejects the endpoint."""
        with self._lock:
            endpoint.in_flight -= 1
            if error is None:
                endpoint.succeeded += 1
                endpoint.overdue = 0
                endpoint.answered_at = time.monotonic()
                endpoint.latencies.append(latency_s)
                if len(endpoint.latencies) >= LATENCY_MIN_SAMPLES and endpoint.succeeded % 16 == 0:
                    p99 = float(np.percentile(np.fromiter(endpoint.latencies, float), 99))
                    endpoint.hedge_after_s = min(max(HEDGE_FACTOR * p99, HEDGE_MIN_S), self.hedge_max_s)
            else:
                endpoint.failed += 1
                if retryable(error) and endpoint.healthy:
                    self._mark_ejected(endpoint, one_line(error))
            self._drop_drained()
            self._lock.notify_all()

    def unclaim(self, endpoint: Endpoint) -> None:
        """Hand back an endpoint from :meth:`acquire` whose request was never sent or was withdrawn."""
        with self._lock:
            endpoint.in_flight -= 1
            self._drop_drained()
            self._lock.notify_all()

    def note_overdue(self, endpoint: Endpoint) -> None:
        """A request on ``endpoint`` went unanswered past ``hedge_after_s`` and was sent elsewhere too.

        HANG_LIMIT of them in a row, with no answer from it for ``hedge_max_s``,
        eject it as hung: a slow request now and then is noise (on a busy
        machine several at once), a server that answers nothing is not.
        """
        with self._lock:
            endpoint.hedged += 1
            endpoint.overdue += 1
            silent_s = time.monotonic() - endpoint.answered_at
            if endpoint.overdue >= HANG_LIMIT and silent_s >= self.hedge_max_s and endpoint.healthy:
                self._mark_ejected(endpoint, f"hung: {endpoint.overdue} requests in a row overdue, no answer "
                                             f"for {silent_s:.1f} s")
                self._lock.notify_all()

    def stats(self) -> list[dict]:
        """Per endpoint: url, healthy, in_flight, succeeded, failed, hedged, ejections, last_error."""
        with self._lock:
            return [{"url": e.url, "healthy": e.healthy, "in_flight": e.in_flight, "succeeded": e.succeeded,
                     "failed": e.failed, "hedged": e.hedged, "ejections": e.ejections, "last_error": e.last_error}
                    for e in self.endpoints]

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._closed = True
            endpoints, self._retired = [*self.endpoints, *self._retired], []
        for endpoint in endpoints:
            endpoint.client.close()
