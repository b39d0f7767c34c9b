"""The gRPC channel from this process to the Triton server it started.

Triton's own HTTP frontend is never started (:mod:`ddn.serving.http_gateway`
says why), so readiness, the HTTP gateway and the metrics page reach the
server through its gRPC port. With TLS that port speaks only TLS: the channel
trusts the server's own certificate file (which must therefore hold the chain
up to its root, as a self-signed certificate does) and checks it against a
name the certificate was issued for, since it connects to a loopback address
the certificate need not name.
"""
from __future__ import annotations

import ssl
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2_grpc

# Our own server answers up to max batch size images; the 4 MB gRPC default is too small for large ones.
MAX_MESSAGE_BYTES = 256 << 20


def certificate_name(certificate: Path) -> str:
    """A DNS name or IP address ``certificate`` (PEM) was issued for: its first subject alternative name, or CN."""
    # The stdlib's decoder is the only X.509 parser without an extra dependency; it returns what
    # SSLSocket.getpeercert() returns.
    decoded = ssl._ssl._test_decode_cert(str(certificate))  # type: ignore[attr-defined]
    names = [value for kind, value in decoded.get("subjectAltName", ()) if kind in ("DNS", "IP Address")]
    names += [value for rdn in decoded.get("subject", ()) for key, value in rdn if key == "commonName"]
    if not names:
        raise ValueError(f"TLS certificate {certificate} names no host (no subject alternative name, no CN)")
    return names[0].strip()


def open_channel(url: str, certificate: Path | None = None) -> grpc.Channel:
    """A channel to the server at ``url`` (``host:port``); TLS trusting ``certificate`` when given."""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    if certificate is None:
        return grpc.insecure_channel(url, options=options)
    credentials = grpc.ssl_channel_credentials(root_certificates=certificate.read_bytes())
    options.append(("grpc.ssl_target_name_override", certificate_name(certificate)))
    return grpc.secure_channel(url, credentials, options=options)


def inference_service(channel: grpc.Channel) -> service_pb2_grpc.GRPCInferenceServiceStub:
    """Triton's KServe v2 gRPC service over ``channel`` (thread-safe, unlike tritonclient's client object)."""
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)
