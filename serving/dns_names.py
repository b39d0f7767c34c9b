"""One DNS name that stands for a fleet: ``dns:///ddn-triton-headless:8001``.

A Kubernetes headless Service answers a DNS query with one address per ready
pod. A gRPC channel to such a name would pick one address and keep it for the
life of the connection, so a long run would never spread over pods that start
later. Here the name is resolved to every address (A and AAAA records), each
address becomes an endpoint of the fleet (:class:`ddn.serving.endpoints.EndpointPool`),
and the name is resolved again every few seconds: new addresses join after a
probe and an identity check, addresses that disappear are drained.

The syntax is gRPC's: ``dns:///host:port`` or ``dns:host:port``; an authority
(``dns://8.8.8.8/host:port``, a DNS server to ask) is refused, the system's
resolver is always used.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Callable, Sequence

SCHEME = "dns:"

Resolver = Callable[[str, int], Sequence[str]]
"""``(host, port) -> addresses``: every IPv4/IPv6 address the name has now (raises OSError if it has none)."""


@dataclass(frozen=True)
class DnsName:
    """A ``dns:`` target: the name to resolve and the port every address serves on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{SCHEME}///{self.host}:{self.port}"

    def endpoints(self, resolver: Resolver) -> list[str]:
        """``host:port`` (``[v6]:port``) for each address the name resolves to now, in resolver order, no repeats."""
        urls = [address_url(address, self.port) for address in resolver(self.host, self.port)]
        return list(dict.fromkeys(urls))


def is_dns_target(target: str) -> bool:
    return target.startswith(SCHEME)


def parse_dns_target(target: str) -> DnsName:
    """The name and port of ``dns:///host:port`` or ``dns:host:port``; ValueError naming what is wrong."""
    rest = target[len(SCHEME):]
    if rest.startswith("//"):
        authority, _, rest = rest[2:].partition("/")
        if authority:
            raise ValueError(f"{target}: a DNS server authority is not supported; use dns:///HOST:PORT")
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{target}: expected dns:///HOST:PORT with a port 1-65535")
    return DnsName(host, int(port))


def address_url(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def system_resolver(host: str, port: int) -> list[str]:
    """Every address of ``host`` from the system's resolver (getaddrinfo: A and AAAA records, /etc/hosts)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))
