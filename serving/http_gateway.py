"""ddn-serve's HTTP port: a small KServe v2 JSON gateway in front of Triton's gRPC port.

Triton 2.51's own HTTP frontend crashes on single malformed requests, so it is never started; this
gateway bounds the body, parses it with Python's JSON parser, checks every input against the model
(:mod:`ddn.serving.json_infer`) and forwards what is valid over gRPC. Routes: docs/serving.md.
"""
from __future__ import annotations

import json
import re
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import service_pb2, service_pb2_grpc

from .json_infer import BadRequest, infer_request, infer_response
from .prometheus_metrics import prometheus_text

MAX_BODY_BYTES = 32 << 20
MAX_CONNECTIONS = 128
IDLE_TIMEOUT_S = 30.0  # a client that stops sending (or never finishes a TLS handshake) is dropped
REQUEST_TIMEOUT_S = 120.0

MODEL_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/(ready|config|infer))?")
_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def _with_integers(data: Any, descriptor: Descriptor) -> Any:
    """Protobuf's JSON with 64-bit integers as numbers (protobuf writes them as strings; Triton does not)."""
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            item = field.message_type.fields_by_name["value"]
            if item.message_type is not None:
                data[field.name] = {k: _with_integers(v, item.message_type) for k, v in value.items()}
        elif field.message_type is not None:
            data[field.name] = ([_with_integers(v, field.message_type) for v in value] if isinstance(value, list)
                                else _with_integers(value, field.message_type))
        elif field.type in _INT64:
            data[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
    return data


def message_json(message: Message) -> dict[str, Any]:
    """``message`` as Triton's HTTP frontend writes it: field names as in the .proto, defaults included."""
    data = json_format.MessageToDict(message, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True)
    return _with_integers(data, message.DESCRIPTOR)


class _Reply(Exception):
    """An answer decided before the request was fully handled (an error status and its message)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _status_of(error: grpc.RpcError) -> int:
    code = error.code()
    return {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.UNAVAILABLE: 503}.get(code, 400)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S
    server: _GatewayServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # a request log per call would flood ddn-serve's terminal

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, close: bool = False) -> None:
        self.close_connection = self.close_connection or close
        self._send(status, json.dumps({"error": message}).encode())

    def _body_length(self) -> int:
        """The declared body length (0 if none), or _Reply when it is chunked, not a number or over the limit."""
        if self.headers.get("Transfer-Encoding"):
            raise _Reply(411, "send the body with a Content-Length, not chunked")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise _Reply(400, "Content-Length is not a number") from None
        if not 0 <= length <= self.server.max_body_bytes:
            raise _Reply(413, f"request body over {self.server.max_body_bytes} bytes")
        return length

    def handle_expect_100(self) -> bool:
        # Refuse an oversized body before the client sends it.
        try:
            self._body_length()
        except _Reply as reply:
            self._error(reply.status, str(reply), close=True)
            return False
        return super().handle_expect_100()

    def do_GET(self) -> None:
        # A body sent with a GET is never read, so the connection cannot carry another request.
        self.close_connection = self.close_connection or bool(self.headers.get("Content-Length")
                                                              or self.headers.get("Transfer-Encoding"))
        self._answer(self._get)

    do_HEAD = do_GET

    def do_POST(self) -> None:
        try:
            self._request_body = self.rfile.read(self._body_length())
        except _Reply as reply:
            # The body stays unread, so the connection cannot carry another request.
            self._error(reply.status, str(reply), close=True)
            return
        self._answer(self._post)

    def _answer(self, route: Any) -> None:
        path = unquote(urlsplit(self.path).path)
        try:
            route(path)
        except _Reply as reply:
            self._error(reply.status, str(reply))
        except grpc.RpcError as error:
            self._error(_status_of(error), error.details() or str(error.code()))

    def _get(self, path: str) -> None:
        service = self.server.service
        if self.server.serves_metrics:
            if path != "/metrics":
                raise _Reply(404, "Not Found")
            text = prometheus_text(service.ModelStatistics(service_pb2.ModelStatisticsRequest(), timeout=10))
            return self._send(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
        if path in ("/v2/health/live", "/v2/health/ready"):
            if path.endswith("live"):
                ok = service.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live
            else:
                ok = service.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready
            return self._send(200 if ok else 400, b"", "text/plain")
        match = MODEL_PATH.fullmatch(path)
        if match is None or match[3] == "infer":
            raise _Reply(404, "Not Found")
        name, version = match[1], match[2] or ""
        if match[3] == "ready":
            ready = service.ModelReady(service_pb2.ModelReadyRequest(name=name, version=version), timeout=10).ready
            return self._send(200 if ready else 400, b"", "text/plain")
        if match[3] == "config":
            config = self.server.model_config(name, version)
            return self._send(200, json.dumps(message_json(config), separators=(",", ":")).encode())
        metadata = service.ModelMetadata(service_pb2.ModelMetadataRequest(name=name, version=version), timeout=10)
        answer = message_json(metadata)
        for tensor in answer["inputs"] + answer["outputs"]:
            tensor.pop("parameters", None)  # Triton's HTTP metadata has none
        self._send(200, json.dumps(answer, separators=(",", ":")).encode())

    def _post(self, path: str) -> None:
        match = MODEL_PATH.fullmatch(path)
        if self.server.serves_metrics or match is None or match[3] != "infer":
            raise _Reply(404, "Not Found")
        try:
            parsed = json.loads(self._request_body)
        except RecursionError:
            raise _Reply(400, "request JSON is nested too deeply") from None
        except ValueError as error:
            raise _Reply(400, f"request is not JSON: {error}") from None
        name, version = match[1], match[2] or ""
        try:
            request = infer_request(name, version, parsed, self.server.model_config(name, version))
        except BadRequest as error:
            self._error(400, str(error))
            return
        response = self.server.service.ModelInfer(request, timeout=REQUEST_TIMEOUT_S)
        self._send(200, json.dumps(infer_response(response), separators=(",", ":")).encode())


class _GatewayServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: service_pb2_grpc.GRPCInferenceServiceStub,
                 serves_metrics: bool, tls: ssl.SSLContext | None, max_body_bytes: int):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.service, self.serves_metrics, self.tls, self.max_body_bytes = service, serves_metrics, tls, max_body_bytes
        self._configs: dict[tuple[str, str], Any] = {}
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def model_config(self, name: str, version: str) -> Any:
        """The model's config, asked once (model control mode none: configs never change while serving)."""
        key = (name, version)
        if key not in self._configs:
            request = service_pb2.ModelConfigRequest(name=name, version=version)
            self._configs[key] = self.service.ModelConfig(request, timeout=10).config
        return self._configs[key]

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many open connections: drop this one, keep serving the others
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: socket.socket, client_address: Any) -> None:
        if self.tls is None:
            return super().finish_request(request, client_address)
        # Handshake in the connection's own thread, so a client that stalls it holds up no one else.
        request.settimeout(IDLE_TIMEOUT_S)
        with self.tls.wrap_socket(request, server_side=True) as secure:  # takes over the socket: close it here
            super().finish_request(secure, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up or failed its TLS handshake is no error of the server's


class HttpGateway:
    """An HTTP (or HTTPS) port in front of a Triton gRPC ``service``: KServe v2 JSON, or ``/metrics``.

    Runs in a daemon thread of this process from ``start()`` to ``stop()``.
    """

    def __init__(self, service: service_pb2_grpc.GRPCInferenceServiceStub, host: str, port: int,
                 serves_metrics: bool = False, tls: tuple[Path, Path] | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        context = None
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
        self._server = _GatewayServer((host, port), service, serves_metrics, context, max_body_bytes)
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"http-gateway-{port}",
                                        daemon=True)

    def start(self) -> HttpGateway:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
