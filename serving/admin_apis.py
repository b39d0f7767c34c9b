"""Triton's administrative APIs are closed on every server we start, unless the user opens them with a key.

Any local process can reach a loopback server and the shared-memory, logging and trace APIs trust their
caller (two shared-memory calls abort tritonserver), so closed groups demand a header no gRPC client can
send. Inference, health, metadata and the repository index stay open. docs/serving.md explains how.
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
