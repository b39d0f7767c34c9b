"""Whether a gRPC endpoint speaks TLS, or HTTP/1: the hints behind a "cannot reach" error.

A plaintext gRPC client that reaches a TLS server sees only "Socket closed",
and a TLS client that reaches a plaintext server an SSL error about version
numbers; neither names the mismatch. One TLS handshake tells which protocol
the port speaks. A gRPC client pointed at an HTTP port (ddn-serve's --http
gateway, any web server) also sees only "Socket closed"; one HTTP/1.0 request
tells that case apart. The certificate is not checked here: this asks only whether
TLS is spoken, never whether to trust what answers.
"""
from __future__ import annotations

import socket
import ssl


def _host_port(url: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port``; None for targets gRPC resolves itself (``dns:///...``)."""
    host, sep, port = url.rpartition(":")
    if not sep or "/" in url or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def speaks_tls(url: str, timeout_s: float) -> bool | None:
    """True if ``url`` completes a TLS handshake, False if it answers without TLS, None if nothing answers."""
    address = _host_port(url)
    if address is None:
        return None
    try:
        raw = socket.create_connection(address, timeout=timeout_s)
    except OSError:
        return None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])  # gRPC servers refuse a TLS client that does not offer HTTP/2
    try:
        with context.wrap_socket(raw, server_hostname=address[0]):
            return True
    except (ssl.SSLError, OSError):
        return False
    finally:
        raw.close()


def speaks_http(url: str, timeout_s: float) -> bool:
    """True if ``url`` answers a plaintext HTTP/1.0 request with an HTTP status line (so it is no gRPC port)."""
    address = _host_port(url)
    if address is None:
        return False
    try:
        with socket.create_connection(address, timeout=timeout_s) as raw:
            raw.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
            return raw.recv(5) == b"HTTP/"
    except OSError:
        return False


def http_port_hint(url: str, timeout_s: float) -> str | None:
    """What to change when ``url`` is an HTTP port rather than a gRPC one; None if it is not."""
    if not speaks_http(url, timeout_s):
        return None
    return f"{url} answers HTTP, not gRPC: give the server's gRPC port (8001 by default)"


def tls_mismatch_hint(url: str, client_uses_tls: bool, timeout_s: float) -> str | None:
    """What to change when the client and the server at ``url`` disagree about TLS; None if they agree."""
    server_tls = speaks_tls(url, timeout_s)
    if server_tls and not client_uses_tls:
        return (f"{url} speaks TLS and this client does not: give the server's root certificate "
                "(ddn-generate --tls-root-cert FILE, DDNClient(root_certificates=FILE))")
    if server_tls is False and client_uses_tls:
        return f"{url} does not speak TLS: connect without a root certificate or --tls"
    return None
