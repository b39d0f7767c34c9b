"""The real tritonserver from the nvidia-pytriton wheel, started on this machine's CPU."""
from __future__ import annotations

import os
import re
import signal
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("pytriton", reason="needs the nvidia-pytriton wheel (pip install 'ddn-serve[serving]')")
grpcclient = pytest.importorskip("tritonclient.grpc")

from cli_helpers import one_line_error, usage_error  # noqa: E402
from serve_helpers import children, kill, listening_addresses, start_serve_cli, take_kept_log  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from ddn.deployment_targets import TARGETS_FILE, Served, merge_targets, read_targets, render_targets  # noqa: E402
from ddn.serving.admin_apis import grpc_headers  # noqa: E402
from ddn.serving.repository_view import VIEW_PREFIX, cpu_repository_view  # noqa: E402
from ddn.serving.serve_cli import host_defaults, main as serve_main  # noqa: E402
from ddn.serving.triton_server import SHARED_MEMORY, TEMP_PREFIX, Address, TritonServer, _free_ports  # noqa: E402

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
    """A python-backend model, stated in targets.txt for the cpu target (ddn-serve) as ddn-export would."""
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(CONFIG)
    (repository / name / "1" / "model.py").write_text(model_py)
    existing = read_targets(repository) if (repository / TARGETS_FILE).is_file() else []
    (repository / TARGETS_FILE).write_text(render_targets(merge_targets(existing, [Served("cpu", name, name)], [name])))
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


def test_ports_bound_to_loopback_only(server: TritonServer) -> None:
    # 127.0.0.1 in /proc/net/tcp, and as ::ffff:127.0.0.1 in /proc/net/tcp6 (gRPC binds that way).
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}
    listening = listening_addresses()
    for port in (server.grpc_port, server.metrics_port):
        assert listening.get(port) and listening[port] <= loopback, (port, listening.get(port))
    assert server.grpc_url == f"127.0.0.1:{server.grpc_port}"
    assert server.http_port is None  # HTTP inference only when asked for


def test_shared_memory_regions_are_owner_only(server: TritonServer) -> None:
    regions = server.shared_memory_regions
    assert regions and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in regions), \
        {p.name: oct(p.stat().st_mode) for p in regions}


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
    assert "weights missing on purpose" in take_kept_log(str(error.value))


def test_serve_help() -> None:
    result = CliRunner().invoke(serve_main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "--repository" in result.output and "--grpc-port" in result.output and "--ort-provider" in result.output
    assert "--grpc-host, --host" in result.output  # --host stays, as the gRPC address
    bad = CliRunner().invoke(serve_main, ["--ort-provider", "rocm"])
    assert bad.exit_code == 2 and "'rocm' is not one of 'cpu', 'cuda', 'tensorrt'" in bad.output


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_cli_serves_until_stopped(tmp_path: Path, stop_signal: signal.Signals) -> None:
    write_model(tmp_path, "double", DOUBLE)
    cli, output, ports = start_serve_cli(tmp_path)
    try:
        assert f"gRPC     127.0.0.1:{ports.grpc_port}" in output, output
        assert "model    double: READY" in output, output
        assert "admin" not in output  # the administrative APIs stay closed
        assert "HTTP" not in output and "metrics" not in output  # off unless asked for
        cli.send_signal(stop_signal)
        assert cli.wait(timeout=30) == 0
        assert ports.grpc_port not in listening_addresses()
    finally:
        kill(cli)


def test_serve_cli_opens_the_admin_apis_only_with_the_key_it_prints(tmp_path: Path) -> None:
    write_model(tmp_path, "double", DOUBLE)
    cli, output, ports = start_serve_cli(tmp_path, "--admin-apis")
    try:
        admin = [line for line in output.splitlines() if line.startswith("admin")]
        key = admin[0].split("carrying the key ")[1]
        assert admin[1].strip() == f"admin      gRPC: headers={{'triton-grpc-protocol-ddn-admin-key': '{key}'}}"
        client = grpcclient.InferenceServerClient(ports.grpc_url)
        with pytest.raises(InferenceServerException, match="This protocol is restricted"):
            client.update_log_settings({"log_verbose_level": 2})
        with pytest.raises(InferenceServerException, match="This protocol is restricted"):
            client.update_log_settings({"log_verbose_level": 2}, headers=grpc_headers(key + "x"))
        client.update_log_settings({"log_verbose_level": 2}, headers=grpc_headers(key))
        assert client.get_log_settings(headers=grpc_headers(key), as_json=True)["settings"][
            "log_verbose_level"]["uint32_param"] == 2
    finally:
        kill(cli)


@pytest.mark.parametrize("port, message", [("70000", "70000 is not in the range 1<=x<=65535"),
                                           ("0", "0 is not in the range 1<=x<=65535")])
def test_serve_cli_refuses_impossible_ports(tmp_path: Path, port: str, message: str) -> None:
    line = usage_error(CliRunner().invoke(serve_main, ["--repository", str(tmp_path), "--grpc-port", port]))
    assert "Invalid value for '--grpc-port'" in line and message in line


def test_server_checks_its_ports_before_it_starts(tmp_path: Path) -> None:
    write_model(tmp_path, "double", DOUBLE)
    for port in (0, 70000, -1):
        with pytest.raises(ValueError, match=f"gRPC port {port} is not a TCP port"):
            TritonServer(tmp_path, grpc_port=port)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=f"HTTP port {port} on 127.0.0.1 is not free: Address already in use"):
            TritonServer(tmp_path, http=Address(port=port)).start()
        result = CliRunner().invoke(serve_main, ["--repository", str(tmp_path), "--metrics", "--metrics-port",
                                                 str(port), "--grpc-port", str(_free_ports("127.0.0.1", 1)[0])])
        assert one_line_error(result) == f"Error: metrics port {port} on 127.0.0.1 is not free: Address already in use"
        assert time.monotonic() - started < 10  # not the 60 s start-up timeout
    with pytest.raises(RuntimeError, match="the server's ports must differ"):
        TritonServer(tmp_path, grpc_port=port, metrics=Address(port=port)).start()


def wait_dead(pid: int) -> None:
    """Until ``pid`` is gone or a zombie (its parent, killed, cannot reap it)."""
    while True:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.05)


def test_next_server_removes_what_a_killed_ddn_serve_and_its_crashed_server_left(tmp_path: Path) -> None:
    write_model(tmp_path / "repo", "double", DOUBLE)
    cli, output, _ = start_serve_cli(tmp_path / "repo")
    tag = f"{cli.pid}-"
    try:
        assert "model    double: READY" in output, output
        (server_pid,) = children(cli.pid)
        regions = [p for p in SHARED_MEMORY.iterdir() if p.name.startswith(f"{TEMP_PREFIX}{tag}")]
        folders = [p for p in Path(tempfile.gettempdir()).iterdir()
                   if p.name.startswith((f"{TEMP_PREFIX}{tag}", f"{VIEW_PREFIX}{tag}"))]
        assert regions and len(folders) == 2, (regions, folders)
        # Freeze the server so that it cannot clean up, kill ddn-serve, then the server: a crash of both.
        os.kill(server_pid, signal.SIGSTOP)
        kill(cli)
        os.kill(server_pid, signal.SIGKILL)
        wait_dead(server_pid)
        assert all(p.exists() for p in regions + folders)
        write_model(tmp_path / "next", "double", DOUBLE)
        with cpu_repository_view(tmp_path / "next") as view, TritonServer(view) as running:  # what ddn-serve runs
            assert not any(p.exists() for p in regions + folders), [p for p in regions + folders if p.exists()]
            assert running.shared_memory_regions
    finally:
        kill(cli)


def test_stop_removes_the_regions_of_a_server_that_crashed(server: TritonServer, tmp_path: Path) -> None:
    write_model(tmp_path, "double", DOUBLE)
    with TritonServer(tmp_path) as crashing:
        regions = crashing.shared_memory_regions
        assert regions and not set(regions) & set(server.shared_memory_regions)
        os.kill(crashing.pid, signal.SIGKILL)
        crashing.wait()
        assert all(p.exists() for p in regions)
    assert not any(p.exists() for p in regions)
    assert server.shared_memory_regions  # another live server's regions stay


@pytest.mark.parametrize("args, message", [
    (["--http-port", "8080"], "Error: --http-port needs --http (the http port is off by default)"),
    (["--http-host", "0.0.0.0"], "Error: --http-host needs --http (the http port is off by default)"),
    (["--metrics-host", "0.0.0.0"], "Error: --metrics-host needs --metrics (the metrics port is off by default)"),
])
def test_serve_cli_refuses_an_address_for_a_port_that_is_off(tmp_path: Path, args: list[str], message: str) -> None:
    assert usage_error(CliRunner().invoke(serve_main, ["--repository", str(tmp_path), *args])) == message


def test_serve_cli_names_an_unknown_model_and_lists_the_repositorys(tmp_path: Path) -> None:
    write_model(tmp_path, "double", DOUBLE)
    line = one_line_error(CliRunner().invoke(serve_main, ["--repository", str(tmp_path), "--model", "nosuch"]))
    assert line == "Error: the repository serves no model 'nosuch' on the cpu target; its models: (none)"


@pytest.mark.parametrize("flag, instead", [
    ("--allow-http=true", "--http"), ("--http-port=8000", "--http, --http-host, --http-port"),
    ("--metrics-address=0.0.0.0", "--metrics, --metrics-host, --metrics-port"), ("--grpc-port=1", "--grpc-port"),
    ("--grpc-address=0.0.0.0", "--grpc-host"), ("--model-control-mode=explicit", "--model"),
    ("--grpc-restricted-protocol=shared-memory:k=v", "--admin-apis"), ("--model-repository=/x", "--repository"),
    ("--backend-directory=/x", "none (ddn-serve links the python backend itself)")])
def test_serve_cli_refuses_triton_flags_that_undo_its_settings(tmp_path: Path, flag: str, instead: str) -> None:
    line = usage_error(CliRunner().invoke(serve_main, ["--repository", str(tmp_path), f"--triton-arg={flag}"]))
    assert line == (f"Error: --triton-arg {flag.split('=')[0]} is refused: it would undo a setting ddn-serve keeps "
                    f"the server safe with; use {instead}")


def test_a_failed_server_keeps_its_log_and_names_it(tmp_path: Path) -> None:
    """A flag passed through that tritonserver rejects: the server exits, its log survives the cleanup."""
    write_model(tmp_path, "double", DOUBLE)
    result = CliRunner().invoke(serve_main, ["--repository", str(tmp_path), "--triton-arg=--log-verbose=loud",
                                             "--grpc-port", str(_free_ports("127.0.0.1", 1)[0])])
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert re.fullmatch(r"Error: tritonserver exited with code \d+ before it was ready; its log is kept at \S+", last)
    assert 'Bad option: "--log-verbose"' in take_kept_log(last)


def test_serve_cli_defaults_fit_the_cpu_host() -> None:
    cores = len(os.sched_getaffinity(0))
    assert host_defaults(None, None, None, None) == (min(cores, 4), 1, 0)
    assert host_defaults(3, 2, 500, "cpu") == (3, 2, 500)
    assert host_defaults(None, None, None, "cuda") == (None, None, None)  # a GPU provider: as exported
