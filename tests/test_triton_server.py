"""The real tritonserver from the nvidia-pytriton wheel, started on this machine's CPU."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("pytriton", reason="needs the nvidia-pytriton wheel (pip install 'ddn-serve[serving]')")
grpcclient = pytest.importorskip("tritonclient.grpc")

from ddn.serving.serve_cli import main as serve_main  # noqa: E402
from ddn.serving.triton_server import TritonServer  # noqa: E402

CONFIG = """
backend: "python"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

# Records which Python the stub embeds, so the test can check it is this one.
DOUBLE = """
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        Path(args["model_repository"], "stub_python.txt").write_text(f"{sys.version}\\n{sys.prefix}")

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy() * np.float32(2))]) for r in requests]
"""

BROKEN = """
class TritonPythonModel:
    def initialize(self, args):
        raise ValueError("weights missing on purpose")

    def execute(self, requests):
        return []
"""


def write_model(repository: Path, name: str, model_py: str) -> Path:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(CONFIG)
    (repository / name / "1" / "model.py").write_text(model_py)
    return repository / name


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    repository = tmp_path_factory.mktemp("repo")
    write_model(repository, "double", DOUBLE)
    with TritonServer(repository) as running:
        yield running


def test_grpc_round_trip(server: TritonServer) -> None:
    x = np.array([[1.0, -2.5, 3.0], [0.0, 4.0, 0.5]], dtype=np.float32)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    request = grpcclient.InferInput("x", list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    result = client.infer("double", [request], outputs=[grpcclient.InferRequestedOutput("y")])
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
    assert client.is_server_ready() and client.is_model_ready("double")


def test_stub_runs_this_interpreter(server: TritonServer) -> None:
    version, prefix = (server.repository / "double" / "stub_python.txt").read_text().split("\n")
    assert (version, prefix) == (sys.version, sys.prefix)


def _listening_addresses() -> dict[int, set[str]]:
    """Port -> local addresses (hex, as in /proc/net) of this namespace's listening TCP sockets."""
    listening: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            if state == "0A":  # TCP_LISTEN
                address, port = local.split(":")
                listening.setdefault(int(port, 16), set()).add(address)
    return listening


def test_ports_bound_to_loopback_only(server: TritonServer) -> None:
    # 127.0.0.1 in /proc/net/tcp, and as ::ffff:127.0.0.1 in /proc/net/tcp6 (gRPC binds that way).
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}
    listening = _listening_addresses()
    for port in (server.grpc_port, server.http_port, server.metrics_port):
        assert listening.get(port) and listening[port] <= loopback, (port, listening.get(port))
    assert server.grpc_url == f"127.0.0.1:{server.grpc_port}"


def test_missing_repository(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        TritonServer(missing)


def test_model_failing_initialize_fails_start(tmp_path: Path) -> None:
    write_model(tmp_path, "broken_model", BROKEN)
    server = TritonServer(tmp_path, startup_timeout=30)
    with pytest.raises(RuntimeError, match="broken_model") as error:
        server.start()
    assert "weights missing on purpose" in str(error.value)
    assert server.log_path is None  # stopped and cleaned up


def test_serve_help() -> None:
    result = CliRunner().invoke(serve_main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "--repository" in result.output and "--grpc-port" in result.output and "--ort-provider" in result.output
    bad = CliRunner().invoke(serve_main, ["--ort-provider", "rocm"])
    assert bad.exit_code == 2 and "'rocm' is not one of 'cpu', 'cuda', 'tensorrt'" in bad.output


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_cli_serves_until_stopped(tmp_path: Path, stop_signal: signal.Signals) -> None:
    write_model(tmp_path, "double", DOUBLE)
    # The CLI's defaults are Triton's fixed ports 8000-8002; borrow three free ones
    # from a server object that is never started.
    ports = TritonServer(tmp_path)
    cli = subprocess.Popen(
        [sys.executable, "-m", "ddn.serving.serve_cli", "--repository", str(tmp_path),
         "--grpc-port", str(ports.grpc_port), "--http-port", str(ports.http_port),
         "--metrics-port", str(ports.metrics_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # Like a terminal's shell: a background pytest would hand SIGINT down ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        output = ""
        deadline = time.monotonic() + 60
        while "press Ctrl-C" not in output and cli.poll() is None and time.monotonic() < deadline:
            output += cli.stdout.readline()
        assert f"gRPC     127.0.0.1:{ports.grpc_port}" in output, output
        assert "model    double: READY" in output, output
        cli.send_signal(stop_signal)
        assert cli.wait(timeout=30) == 0
        assert ports.grpc_port not in _listening_addresses()
    finally:
        if cli.poll() is None:
            os.kill(cli.pid, signal.SIGKILL)
            cli.wait()
