"""No single request takes ddn-serve down, on any port it listens on, and TLS covers every exposed port.

Triton 2.51's own HTTP frontend and metrics port die on each of CRASH_BODIES
(std::bad_alloc, SIGSEGV, SIGSEGV), so ddn-serve never starts them; these
tests send the same bodies, and their gRPC equivalents, to every port that a
default ddn-serve, one with --http --metrics and one exposed with TLS listen
on (read from the sockets its processes hold), then check that the same seeds
still give the same bytes as ONNX Runtime in this process.
"""
from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, NamedTuple

import grpc
import numpy as np
import pytest

pytest.importorskip("pytriton", reason="needs the nvidia-pytriton wheel (pip install 'ddn-serve[serving]')")
pytest.importorskip("tritonclient.grpc")
pytest.importorskip("cryptography")

from serve_helpers import children, kill, listening_sockets, process_group_members, start_serve_cli  # noqa: E402
from tls_helpers import self_signed  # noqa: E402
from tritonclient.grpc import service_pb2  # noqa: E402

from ddn.serving.client import DDNClient  # noqa: E402
from ddn.serving.local_grpc import inference_service, open_channel  # noqa: E402
from ddn.serving.onnx_model import OnnxModel  # noqa: E402
from ddn.serving.tls_probe import speaks_tls  # noqa: E402

NAME = "tiny"
SEEDS = [3, 4, 5]
LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
HUGE_SHAPE = [4294967296, 4]
CRASH_BODIES = {
    "huge shape": json.dumps({"inputs": [{"name": "codes", "shape": HUGE_SHAPE, "datatype": "INT32",
                                          "data": [1, 2, 3, 4]}]}).encode(),
    "deep nesting": b"[" * 200_000 + b"]" * 200_000,
    "64 MB of spaces": b" " * (64 << 20),
}


@pytest.fixture(scope="module")
def repository(tiny_generation_repository: Path) -> Path:
    return tiny_generation_repository


@pytest.fixture(scope="module")
def local(repository: Path) -> OnnxModel:
    return OnnxModel.from_repository(repository, NAME)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"), "server")


class Served(NamedTuple):
    """A running ddn-serve: its gRPC URL, the ports its processes listen on, the certificate when TLS."""
    grpc_url: str
    http_port: int | None
    metrics_port: int | None
    listening: set[tuple[str, int]]
    certificate: Path | None
    alive: object  # () -> bool: ddn-serve and its tritonserver both still run

    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.certificate)) if self.certificate else None


SETUPS = {
    "default": [],
    "http and metrics": ["--http", "--metrics"],
    "exposed with TLS": ["--grpc-host", "0.0.0.0", "--http", "--http-host", "0.0.0.0",
                         "--metrics", "--metrics-host", "0.0.0.0"],
}


@pytest.fixture(scope="module", params=list(SETUPS))
def served(request: pytest.FixtureRequest, repository: Path, certificate: tuple[Path, Path]) -> Iterator[Served]:
    tls = request.param == "exposed with TLS"
    args = SETUPS[request.param] + (["--tls-cert", str(certificate[0]), "--tls-key", str(certificate[1])]
                                    if tls else [])
    cli, output, ports = start_serve_cli(repository, *args)
    try:
        assert "press Ctrl-C" in output, output
        (server_pid,) = children(cli.pid)
        group = [cli.pid, *process_group_members(server_pid)]

        def alive() -> bool:
            return cli.poll() is None and Path(f"/proc/{server_pid}").exists()

        yield Served(ports.grpc_url, ports.http_port if "--http" in args else None,
                     ports.metrics_port if "--metrics" in args else None, listening_sockets(group),
                     certificate[0] if tls else None, alive)
    finally:
        kill(cli)


def generate(served: Served) -> np.ndarray:
    with DDNClient(served.grpc_url, model=NAME, root_certificates=served.certificate, timeout_s=60) as client:
        return client.generate(seeds=SEEDS)


def send_http(port: int, path: str, body: bytes, context: ssl.SSLContext | None, expect: bool) -> int:
    """Status of a raw HTTP/1.1 POST (0: no HTTP answer), sent as curl sends a large body when ``expect``."""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n" + ("Expect: 100-continue\r\n" if expect else "")
            + "\r\n").encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            connection = context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
            connection.sendall(head)
            reply = b""
            if expect:
                connection.settimeout(1)
                try:
                    reply = connection.recv(65536)
                except TimeoutError:
                    pass  # no interim answer: send the body anyway, as curl does after a second
                connection.settimeout(30)
            if not reply or reply.startswith(b"HTTP/1.1 100"):
                connection.sendall(body)
                reply = b"".join(iter(lambda: connection.recv(65536), b""))
    except (OSError, ssl.SSLError):
        return 0  # the port hung up mid-request (refused the body or does not speak this protocol)
    return int(reply.split()[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def grpc_equivalents(served: Served) -> list[str]:
    """Send the gRPC forms of CRASH_BODIES; what each got back (none may take the server down)."""
    channel = open_channel(served.grpc_url, served.certificate)
    service = inference_service(channel)

    def infer(shape: list[int], raw: bytes | None = None, typed: list[int] | None = None) -> None:
        request = service_pb2.ModelInferRequest(model_name=NAME)
        tensor = request.inputs.add(name="codes", datatype="INT32", shape=shape)
        if typed is not None:
            tensor.contents.int_contents.extend(typed)
        if raw is not None:
            request.raw_input_contents.append(raw)
        service.ModelInfer(request, timeout=60)

    raw_method = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                     request_serializer=lambda b: b, response_deserializer=lambda b: b)
    attempts = {
        "huge shape, raw": lambda: infer(HUGE_SHAPE, raw=bytes(16)),
        "huge shape, typed": lambda: infer(HUGE_SHAPE, typed=[1, 2, 3, 4]),
        "2^62 values declared": lambda: infer([1, 2 ** 62], raw=bytes(32)),
        "64 MB tensor": lambda: infer([1, 8], raw=bytes(64 << 20)),
        # Unknown field 15 as a group, opened 200,000 times: protobuf's nesting, like the '[' above.
        "deep nesting": lambda: raw_method(b"\x7b" * 200_000 + b"\x7c" * 200_000, timeout=60),
        "64 MB of spaces": lambda: raw_method(b" " * (64 << 20), timeout=60),
    }
    answers = []
    try:
        for what, attempt in attempts.items():
            try:
                attempt()
                answers.append(f"{what}: answered")
            except grpc.RpcError as error:
                answers.append(f"{what}: {error.code().name}")
    finally:
        channel.close()
    return answers


def test_no_request_takes_the_server_down(served: Served, local: OnnxModel) -> None:
    before = generate(served)
    np.testing.assert_array_equal(before, local.generate(seeds=SEEDS))
    ports = sorted({port for _, port in served.listening})
    assert len(ports) == 1 + (served.http_port is not None) + (served.metrics_port is not None), served.listening
    contexts = [None, served.ssl_context()] if served.certificate else [None]
    statuses = {}
    for port in ports:
        for what, body in CRASH_BODIES.items():
            for path in (f"/v2/models/{NAME}/infer", "/metrics"):
                for context in contexts:
                    for expect in (True, False):
                        statuses[port, what, path, context is not None, expect] = send_http(port, path, body,
                                                                                            context, expect)
    answers = grpc_equivalents(served)
    assert served.alive(), (statuses, answers)
    np.testing.assert_array_equal(generate(served), before)
    # The gateway refused each body itself (over TLS when it speaks TLS): it never reached Triton.
    if served.http_port is not None:
        tls = served.certificate is not None
        assert [statuses[served.http_port, what, f"/v2/models/{NAME}/infer", tls, True] for what in CRASH_BODIES] \
            == [400, 400, 413]
        # Sent without waiting, the 64 MB body meets a closed connection (413 or a reset, whichever comes first).
        assert statuses[served.http_port, "64 MB of spaces", f"/v2/models/{NAME}/infer", tls, False] in (0, 413)
    assert any("INVALID_ARGUMENT" in answer for answer in answers), answers


def test_with_tls_no_plaintext_port_listens_beyond_the_loopback(request: pytest.FixtureRequest,
                                                                served: Served) -> None:
    exposed = {(address, port) for address, port in served.listening if address not in LOOPBACK}
    if served.certificate is None:
        assert not exposed, exposed  # without an address asked for, everything stays on the loopback
        return
    assert {port for _, port in exposed} == {port for _, port in served.listening}, served.listening
    assert all(speaks_tls(f"127.0.0.1:{port}", timeout_s=10) for _, port in exposed), exposed


def http_json(served: Served, path: str, body: dict | None = None) -> tuple[int, dict | str]:
    scheme = "https" if served.certificate else "http"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{scheme}://127.0.0.1:{served.http_port}{path}", data=data)
    try:
        with urllib.request.urlopen(request, timeout=30, context=served.ssl_context()) as reply:
            status, text = reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    return status, json.loads(text) if text.startswith("{") else text


def test_http_gateway_serves_json_inference_like_triton(served: Served, local: OnnxModel) -> None:
    if served.http_port is None:
        pytest.skip("this ddn-serve has no HTTP port")
    codes = local.codes_for_seeds(SEEDS)
    inputs = [{"name": "codes", "shape": list(codes.shape), "datatype": "INT32", "data": codes.ravel().tolist()}]
    status, answer = http_json(served, f"/v2/models/{NAME}/infer", {"id": "r1", "inputs": inputs,
                                                                     "outputs": [{"name": "images"}]})
    assert status == 200, answer
    expected = local.generate(seeds=SEEDS)
    assert answer == {"id": "r1", "model_name": NAME, "model_version": "1", "outputs": [
        {"name": "images", "datatype": "UINT8", "shape": list(expected.shape), "data": expected.ravel().tolist()}]}
    assert http_json(served, "/v2/health/ready") == (200, "")
    status, metadata = http_json(served, f"/v2/models/{NAME}")
    assert metadata["inputs"] == [{"name": "codes", "datatype": "INT32", "shape": [-1, codes.shape[1]]}]
    assert http_json(served, f"/v2/models/{NAME}/config")[1]["max_batch_size"] == 4
    wrong = dict(inputs[0], datatype="FP32")
    assert http_json(served, f"/v2/models/{NAME}/infer", {"inputs": [wrong]}) == (
        400, {"error": "input 'codes': datatype must be INT32, got 'FP32'"})
    short = dict(inputs[0], data=inputs[0]["data"][:-1])
    assert http_json(served, f"/v2/models/{NAME}/infer", {"inputs": [short]}) == (
        400, {"error": f"input 'codes': shape {list(codes.shape)} holds {codes.size} values, data has {codes.size - 1}"})
    assert http_json(served, "/v2/models/nope/infer", {"inputs": inputs})[0] == 404
    # The administrative APIs are not routed at all.
    for path in ("/v2/logging", "/v2/systemsharedmemory/region/x/register", "/v2/repository/models/tiny/load"):
        assert http_json(served, path, {})[0] == 404, path


def test_metrics_count_the_served_requests(served: Served) -> None:
    if served.metrics_port is None:
        pytest.skip("this ddn-serve has no metrics port")
    scheme = "https" if served.certificate else "http"

    def successes() -> int:
        with urllib.request.urlopen(f"{scheme}://127.0.0.1:{served.metrics_port}/metrics", timeout=30,
                                    context=served.ssl_context()) as reply:
            text = reply.read().decode()
        (line,) = [line for line in text.splitlines()
                   if line.startswith(f'nv_inference_request_success{{model="{NAME}",version="1"}} ')]
        return int(line.split()[1])

    before = successes()
    generate(served)  # 3 seeds, max batch 4: one request
    assert successes() == before + 1
