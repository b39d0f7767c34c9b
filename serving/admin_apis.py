"""Triton's administrative APIs are closed on every server we start, unless the user opens them with a key.

Any local process can reach a server bound to 127.0.0.1, and these APIs
trust their caller. Through the shared-memory API, two calls crash the
server: register one of the python backend's own shared-memory regions
(their names are listed in /dev/shm) as client memory, then ask for an
output into it, and tritonserver aborts with every model. The logging and
trace APIs change verbosity and write files wherever the caller says.

Triton 2.51 serves an API group only to requests that carry a header
(``--grpc-restricted-protocol=<groups>:<key>=<value>``; a gRPC client sends
the key as metadata ``triton-grpc-protocol-<key>``). Closed, the groups ask
for a header that no client can send: its name has an upper-case letter,
which HTTP/2 (so gRPC) forbids in header names, and its value a newline. A
key on a command line is visible to every local user (``ps``), so a secret
one would not do. Triton's HTTP frontend is never started, and ddn-serve's
HTTP gateway does not route these APIs at all, so gRPC is their only way in.
Opened on purpose with ``admin_key``, they answer requests that carry it;
that key is visible to local users the same way.

Inference, health, metadata, model config, statistics and the repository
index stay open: clients need them, and with model control mode ``none``
the repository API cannot load or unload anything.
"""
from __future__ import annotations

import secrets

ADMIN_GROUPS = ("shared-memory", "logging", "trace")
ADMIN_HEADER = "ddn-admin-key"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
_CLOSED = ("Ddn-Closed", "no\nclient can send this")


def new_admin_key() -> str:
    return secrets.token_urlsafe(24)


def restriction_flags(admin_key: str | None = None) -> list[str]:
    """The tritonserver options that put ADMIN_GROUPS behind ``admin_key``, or close them when it is None."""
    key, value = _CLOSED if admin_key is None else (ADMIN_HEADER, admin_key)
    setting = f"{','.join(ADMIN_GROUPS)}:{key}={value}"
    return [f"--grpc-restricted-protocol={setting}"]


def grpc_headers(admin_key: str) -> dict[str, str]:
    """The ``headers`` a tritonclient.grpc call needs to reach the administrative APIs."""
    return {GRPC_HEADER_PREFIX + ADMIN_HEADER: admin_key}


def usage(admin_key: str) -> list[str]:
    """How to pass the key, for ddn-serve to print."""
    return [f"{', '.join(ADMIN_GROUPS)} APIs are open to requests carrying the key {admin_key}",
            f"  gRPC: headers={grpc_headers(admin_key)}",
            "  the key is visible to local users in the server's command line (ps); "
            "a crafted shared-memory request can crash the server"]
