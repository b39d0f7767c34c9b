"""Start the real Triton Inference Server shipped in the nvidia-pytriton wheel, with safe defaults.

The wheel's CPU tritonserver (python backend only) is not a runnable install as it lies, so every server
gets a private temporary folder of symlinks into it, removed on stop and left for the next server's
cleanup after a crash (:mod:`ddn.leftovers`). Triton listens on gRPC only, on the loopback unless a host
is given, with its administrative APIs closed; HTTP and metrics come from ddn-serve's own gateway.
docs/serving.md lists every setting and why.
"""
from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Callable, Sequence

import grpc
from tritonclient.grpc import service_pb2

from ddn.leftovers import remove_stale, tagged

from .admin_apis import restriction_flags
from .http_gateway import HttpGateway
from .local_grpc import inference_service, open_channel

KEPT_LOG_PREFIX = "ddn-tritonserver-"
INSTALL_HINT = "install the nvidia-pytriton package (pip install 'ddn-serve[serving]')"


def find_tritonserver() -> Path:
    """Path of the tritonserver binary inside the installed nvidia-pytriton wheel."""
    # find_spec locates the package without importing it (pytriton's import is heavy).
    spec = importlib.util.find_spec("pytriton")
    locations = list(spec.submodule_search_locations or []) if spec else []
    binary = Path(locations[0]) / "tritonserver" / "bin" / "tritonserver" if locations else None
    if binary is None or not binary.is_file():
        raise FileNotFoundError(f"tritonserver binary not found: {INSTALL_HINT}")
    return binary


def _backend_directory(root: Path, dist: Path) -> Path:
    """Build ``root/backends/python`` from links into the wheel's ``tritonserver`` folder ``dist``."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise FileNotFoundError(f"nvidia-pytriton has no python backend stub for Python {version} ({stub})")
    python_dir = root / "backends" / "python"
    python_dir.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (python_dir / name).symlink_to(dist / "backends" / "python" / name)
    # The backend looks for the stub beside the libtriton_python.so it was loaded
    # from (the link's folder), so a link to the stub is enough; no copy needed.
    (python_dir / "triton_python_backend_stub").symlink_to(stub)
    return root / "backends"


def _server_env(dist: Path) -> dict[str, str]:
    """Environment for tritonserver and, through it, the python backend stubs."""
    env = dict(os.environ)
    libs = [str(dist.parent.parent / "nvidia_pytriton.libs")]
    # The stub links libpython3.X.so.1.0 by soname. Without this the loader takes the
    # system's libpython of that minor version if there is one (Debian's 3.11.2 here)
    # and runs it on this interpreter's stdlib (pyenv 3.11.7): it imported numpy, but
    # it is another build. Our LIBDIR on the path makes the stub embed our interpreter.
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        libs.append(sysconfig.get_config_var("LIBDIR"))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
    # The embedded interpreter has no argv[0], so it searches PATH for "python3" to
    # find its prefix. Finding the venv's python3 first makes it read pyvenv.cfg and
    # use the venv's site-packages (with .pth files, so editable installs work too),
    # which PYTHONPATH alone would not give; model.py then imports numpy/onnxruntime
    # exactly as this process does.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


# Run as ``python -I -c LAUNCHER PARENT_PID BINARY ARGS...``: asks the kernel for SIGTERM when the
# parent dies, then becomes the server (the request survives execve). Exits if the parent is gone already.
_PARENT_DEATH_LAUNCHER = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM); "  # 1: PR_SET_PDEATHSIG
    "os.getppid() == int(sys.argv[1]) or sys.exit(1); "
    "os.execv(sys.argv[2], sys.argv[2:])")


def _dying_with_parent(command: list[str]) -> list[str]:
    """``command`` started so that the kernel sends it SIGTERM when this process dies.

    The server runs in its own session, so without this a parent killed with
    SIGKILL (or os._exit, e.g. a test timeout) would leave it serving forever.
    Linux delivers the signal when the *thread* that started the server exits,
    so start servers from a thread that outlives them (normally the main thread).
    It is set by a launcher rather than a preexec_fn: a preexec_fn makes
    subprocess fork() instead of vfork(), and fork runs grpcio's fork handlers,
    which restart its poller in the child; the child's closing of inherited
    descriptors then aborts it (``epoll_wait error: Bad file descriptor``).
    """
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-I", "-c", _PARENT_DEATH_LAUNCHER, str(os.getpid()), *command]


REGION_MODE = 0o600
REGION_CHECK_INTERVAL_S = 0.02


def _keep_owner_only(regions: Callable[[], list[Path]], stopped: threading.Event) -> None:
    """Until ``stopped``: chmod every region ``regions()`` lists to owner-only as soon as it appears.

    The python backend creates its shared-memory regions (the tensors of every
    request) through Boost.Interprocess, which fchmods them to 0644 whatever
    the umask, and names them with a fresh UUID, so they can be neither created
    beforehand nor made private by the umask. A stub the backend restarts gets
    a new region, hence a watch for the server's whole life rather than one pass.
    A local process that opens a region within that interval of its creation
    (while the models load, before any request) keeps its descriptor.
    """
    while not stopped.wait(REGION_CHECK_INTERVAL_S):
        for region in regions():
            try:
                if region.stat().st_mode & 0o777 != REGION_MODE:
                    region.chmod(REGION_MODE)
            except FileNotFoundError:
                pass  # removed by the backend meanwhile


@dataclass(frozen=True)
class Address:
    """Where a port listens: ``host`` (0.0.0.0 exposes it to the network) and ``port`` (None: any free one)."""
    host: str = "127.0.0.1"
    port: int | None = None


def _client_host(host: str) -> str:
    """How this machine reaches an address bound to ``host`` (a wildcard bind through the loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def _free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports that are free on ``host`` (all held open until all are chosen)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets = [socket.socket(family, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


TEMP_PREFIX = "ddn-triton-"
SHARED_MEMORY = Path("/dev/shm")  # where Linux keeps POSIX shared-memory regions


def check_port(port: int, what: str) -> int:
    """``port`` if it is one a server can listen on (1-65535), else ValueError naming ``what``."""
    if not 1 <= port <= 65535:
        raise ValueError(f"{what} {port} is not a TCP port (1-65535)")
    return port


def _check_free(ports: dict[str, tuple[str, int]]) -> None:
    """RuntimeError naming the first port something already listens on (the server would fail to bind it)."""
    numbers = [port for _, port in ports.values()]
    if len(set(numbers)) < len(numbers):
        raise RuntimeError(f"the server's ports must differ, got {', '.join(f'{k} {v[1]}' for k, v in ports.items())}")
    for what, (host, port) in ports.items():
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise RuntimeError(f"{what} {port} on {host or '0.0.0.0'} is not free: {exc.strerror}") from None


def _remove_leftovers() -> None:
    """Temporary folders and shared-memory regions of servers whose starting process is gone."""
    remove_stale(tempfile.gettempdir(), TEMP_PREFIX)
    remove_stale(SHARED_MEMORY, TEMP_PREFIX)


def tls_arguments(cert: Path, key: Path) -> list[str]:
    """tritonserver options that make its gRPC endpoint TLS-only with this PEM certificate and private key."""
    return ["--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"]


def _tls_files(cert: str | Path | None, key: str | Path | None) -> tuple[Path, Path] | None:
    """The certificate and key as resolved paths; both or neither, each an existing file."""
    if (cert is None) != (key is None):
        raise ValueError("TLS needs both a certificate and its private key")
    if cert is None:
        return None
    files = Path(cert).expanduser().resolve(), Path(key).expanduser().resolve()
    for what, path in zip(("certificate", "private key"), files):
        if not path.is_file():
            raise FileNotFoundError(f"TLS {what} not found: {path}")
    return files


class TritonServer:
    """A tritonserver process serving ``repository``; use as a context manager.

    Triton listens on gRPC only (``grpc_url``); ``http`` and ``metrics`` (an :class:`Address` each, or
    None) open this process's gateway for JSON inference and ``/metrics`` (by default metrics on a free
    loopback port, HTTP off). ``admin_key`` opens the administrative APIs, ``tls_cert`` and ``tls_key``
    make every port TLS-only, and ``extra_args`` are appended tritonserver flags.
    """

    def __init__(self, repository: str | Path, grpc_port: int | None = None, host: str = "127.0.0.1",
                 http: Address | None = None, metrics: Address | None = Address(), log_verbose: int = 0,
                 startup_timeout: float = 60.0, admin_key: str | None = None,
                 tls_cert: str | Path | None = None, tls_key: str | Path | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        self.repository = Path(repository).expanduser().resolve()
        if not self.repository.is_dir():
            raise FileNotFoundError(f"model repository not found: {self.repository}")
        wanted = {"gRPC port": Address(host, grpc_port), "HTTP port": http, "metrics port": metrics}
        for what, address in wanted.items():
            if address is not None and address.port is not None:
                check_port(address.port, what)
        self.tls = _tls_files(tls_cert, tls_key)
        self.binary = find_tritonserver()
        # Free ports are chosen per host, all at once, so that no two of them coincide.
        self.addresses: dict[str, Address] = {}
        for bind_host in dict.fromkeys(a.host for a in wanted.values() if a is not None):
            mine = [w for w, a in wanted.items() if a is not None and a.host == bind_host]
            free = iter(_free_ports(bind_host, sum(wanted[w].port is None for w in mine)))
            for what in mine:
                self.addresses[what] = Address(bind_host, wanted[what].port or next(free))
        self.host, self.grpc_port = host, self.addresses["gRPC port"].port
        self.admin_key = admin_key
        self.extra_args = list(extra_args)
        self.log_verbose = log_verbose
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._channel: grpc.Channel | None = None
        self._gateways: list[HttpGateway] = []
        self._regions_watch: tuple[threading.Thread, threading.Event] | None = None

    def _url(self, what: str) -> str:
        address = self.addresses.get(what)
        if address is None:
            raise RuntimeError(f"this server has no {what} (it was not asked for)")
        return f"{_client_host(address.host)}:{address.port}"

    @property
    def grpc_url(self) -> str:
        return self._url("gRPC port")

    @property
    def http_url(self) -> str:
        return self._url("HTTP port")

    @property
    def http_port(self) -> int | None:
        return self.addresses["HTTP port"].port if "HTTP port" in self.addresses else None

    @property
    def metrics_port(self) -> int | None:
        return self.addresses["metrics port"].port if "metrics port" in self.addresses else None

    @property
    def metrics_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self._url('metrics port')}/metrics"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs; also the id of its process group (its stubs included)."""
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path | None:
        """The server's log file while it runs (removed by stop; a failure keeps a copy, see keep_log)."""
        return self._workdir / "tritonserver.log" if self._workdir else None

    def command(self, backend_directory: Path) -> list[str]:
        """The tritonserver command line (public so callers can log exactly what runs)."""
        dist = self.binary.parent.parent
        return [
            str(self.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_directory}",
            f"--cache-directory={dist / 'caches'}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            # Both are crashed by single requests (see http_gateway); our gateway serves them instead.
            "--allow-http=false", "--allow-metrics=false",
            "--model-control-mode=none",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--log-verbose={self.log_verbose}",
            *restriction_flags(self.admin_key),
            f"--backend-config=python,shm-region-prefix-name={self._shared_memory_prefix}",
            *(tls_arguments(*self.tls) if self.tls else []),
            *self.extra_args,
        ]

    @property
    def _shared_memory_prefix(self) -> str:
        """The start of this server's shared-memory region names: its temporary folder's (owner-tagged) name."""
        assert self._workdir is not None, "a server has its temporary folder from start() to stop()"
        return f"{self._workdir.name}-"

    @property
    def shared_memory_regions(self) -> list[Path]:
        """The python backend's shared-memory regions of this server (any local user can list them)."""
        return sorted(SHARED_MEMORY.glob(f"{self._shared_memory_prefix}*")) if self._workdir else []

    def start(self) -> TritonServer:
        """Launch the server and return once it and every model in the repository are ready."""
        if self._process is not None:
            raise RuntimeError("server already started")
        _check_free({what: (a.host, a.port) for what, a in self.addresses.items()})
        _remove_leftovers()
        self._workdir = Path(tempfile.mkdtemp(prefix=tagged(TEMP_PREFIX)))
        try:
            dist = self.binary.parent.parent
            backends = _backend_directory(self._workdir, dist)
            with open(self._workdir / "tritonserver.log", "wb") as log:
                # Own session/process group: a terminal's Ctrl-C reaches only us (we stop
                # the server in order), and stop() can kill a hung server with its stubs.
                self._process = subprocess.Popen(_dying_with_parent(self.command(backends)), stdout=log, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, env=_server_env(dist),
                                                 start_new_session=True)
            atexit.register(self.stop)
            stopped = threading.Event()
            watch = threading.Thread(target=_keep_owner_only, args=(lambda: self.shared_memory_regions, stopped),
                                     name="shared-memory-modes", daemon=True)
            self._regions_watch = watch, stopped
            watch.start()
            self._channel = open_channel(self.grpc_url, self.tls[0] if self.tls else None)
            self._wait_ready()
            self._start_gateways()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_gateways(self) -> None:
        service = inference_service(self._channel)
        for what, serves_metrics in (("HTTP port", False), ("metrics port", True)):
            address = self.addresses.get(what)
            if address is not None:
                try:
                    gateway = HttpGateway(service, address.host, address.port, serves_metrics, self.tls)
                except OSError as exc:
                    raise RuntimeError(f"{what} {address.port} on {address.host} is not free: {exc.strerror}") \
                        from None
                self._gateways.append(gateway.start())

    def _call(self, method: str, request: object) -> object | None:
        """The answer of a gRPC call to the server, or None while it does not answer (yet)."""
        assert self._channel is not None
        try:
            return getattr(inference_service(self._channel), method)(request, timeout=2)
        except grpc.RpcError:
            return None

    def model_states(self) -> dict[str, str]:
        """Model name -> state (``READY``, or state and reason) from the repository index."""
        index = self._call("RepositoryIndex", service_pb2.RepositoryIndexRequest())
        entries = index.models if index is not None else []
        return {e.name: " ".join(filter(None, [e.state or "UNKNOWN", e.reason])) for e in entries}

    def _wait_ready(self) -> None:
        assert self._process is not None
        expected = sorted(p.name for p in self.repository.iterdir() if p.is_dir() and not p.name.startswith("."))
        deadline = time.monotonic() + self.startup_timeout
        states: dict[str, str] = {}
        while True:
            code = self._process.poll()
            if code is not None:
                raise RuntimeError(f"tritonserver exited with code {code} before it was ready{self.log_report()}")
            ready = self._call("ServerReady", service_pb2.ServerReadyRequest())
            if ready is not None and ready.ready:
                states = self.model_states()
                if all(states.get(name) == "READY" for name in expected):
                    return
            if time.monotonic() > deadline:
                waiting = {name: states.get(name, "still loading") for name in expected
                           if states.get(name) != "READY"}
                raise RuntimeError(f"tritonserver not ready after {self.startup_timeout:g} s "
                                   f"(models not ready: {waiting or 'none'}){self.log_report()}")
            time.sleep(0.1)

    def log_report(self, lines: int = 30) -> str:
        """Where the log is kept, then model load failures and the tail of the log, for error messages.

        Only a failure asks for this, so this is where the log is copied out of
        the temporary folder that stop() removes.
        """
        path = self.log_path
        text = path.read_text(errors="replace") if path and path.exists() else ""
        kept = self.keep_log()
        # Drop table borders so the tail holds more of what was said.
        log = [line for line in text.splitlines() if not line.startswith("+-")]
        failures = [line for line in log if "failed to load" in line]
        report = "".join(f"\n{line}" for line in failures)
        where = f"; its log is kept at {kept}" if kept else ""
        return f"{where}{report}\n--- last {lines} lines of the tritonserver log ---\n" + "\n".join(log[-lines:])

    def keep_log(self) -> Path | None:
        """Copy the log to ``<temp dir>/ddn-tritonserver-<pid>-<time>.log`` (it outlives stop()); None if none."""
        path = self.log_path
        if path is None or not path.exists():
            return None
        kept = Path(tempfile.gettempdir()) / f"{KEPT_LOG_PREFIX}{os.getpid()}-{time.time_ns()}.log"
        shutil.copyfile(path, kept)
        return kept

    def wait(self, timeout: float | None = None) -> int:
        """Block until the server process exits (subprocess.TimeoutExpired after ``timeout``); its exit code."""
        if self._process is None:
            raise RuntimeError("server not started")
        return self._process.wait(timeout)

    def poll(self) -> int | None:
        """The server's exit code once it has exited; None while it runs."""
        if self._process is None:
            raise RuntimeError("server not started")
        return self._process.poll()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (SIGINT: finish in-flight requests, unload models), killing it after ``timeout``."""
        for gateway in self._gateways:
            gateway.stop()
        self._gateways = []
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            # Only the server: it finalizes the models and stops its own stubs.
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                # The group still exists (its leader is not reaped), so this also
                # reaches stubs the server did not get to stop.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        atexit.unregister(self.stop)
        if self._regions_watch is not None:
            watch, stopped = self._regions_watch
            stopped.set()
            watch.join()
            self._regions_watch = None
        if self._workdir is not None:
            # A server that stopped cleanly removed its regions; one that crashed did not.
            for region in self.shared_memory_regions:
                region.unlink(missing_ok=True)
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
