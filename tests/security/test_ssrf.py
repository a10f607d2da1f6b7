"""No server-side request forgery through Web Push (issue 14, item 5). A subscription's endpoint is a URL a
user gives and the server later POSTs to: without a check, a user registers http://127.0.0.1:<port>/ (or
https://localhost, https://10.0.0.1, https://169.254.169.254...) and every alert makes the server send a
request into its own host or network. Here a listener on 127.0.0.1 (and ::1) stands for such an internal
service, and it is never connected to: not at registration, not when an alert triggers pushes, not for a
subscription stored before the check (refused at send time, logged, dropped, not retried), not after a
redirect, and not when DNS answers differently between the check and the connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

import httpcore
import pytest

from server.core.config import ConfigError
from server.infra import safe_url

PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "192.88.99.1", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e",
          "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]
REFUSED = {
    "loopback": ["127.0.0.1", "127.255.255.254", "::1"],
    "private (RFC 1918)": ["10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.1.1"],
    "shared (CGNAT 100.64/10)": ["100.64.0.1", "100.127.255.254"],
    "link-local (cloud metadata)": ["169.254.169.254", "fe80::1", "fe80::1%1"],
    "multicast": ["224.0.0.1", "239.255.255.250", "ff02::1", "ff0e::1"],
    "reserved / broadcast": ["240.0.0.1", "255.255.255.255", "::7f00:1"],
    "unspecified / this network": ["0.0.0.0", "0.1.2.3", "::"],
    "documentation / benchmarking / IETF": ["192.0.2.1", "198.51.100.1", "203.0.113.1", "198.18.0.1", "192.0.0.1",
                                            "2001:db8::1"],
    "IPv6 unique-local / site-local": ["fc00::1", "fd12:3456::1", "fec0::1"],
    "IPv4-mapped IPv6 of those": ["::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254"],
    "NAT64 / 6to4 / Teredo of those": ["64:ff9b::7f00:1", "64:ff9b::a00:1", "2002:7f00:1::1", "2002:a00:1::",
                                       "2001:0:4136:e378:8000:63bf:3fff:fdd2"],
}


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_public(address: str) -> None:
    assert safe_url.is_public(ip_address(address))


@pytest.mark.parametrize(("kind", "address"), [(k, a) for k, addresses in REFUSED.items() for a in addresses])
def test_every_internal_range_is_refused(kind: str, address: str) -> None:
    assert not safe_url.is_public(ip_address(address)), kind


def test_trusted_origins_are_exact_origins() -> None:
    assert safe_url.trusted_origins(["https://Push.Example.org", "http://10.1.2.3:8080/"]) == {
        "https://push.example.org:443", "http://10.1.2.3:8080"}
    for bad in ("https://push.example.org/path", "push.example.org", "ftp://push.example.org", "https://u:p@h.org",
                "https://push.example.org/?q=1", "https://[::1"):
        with pytest.raises(ConfigError):
            safe_url.trusted_origins([bad])


@dataclass
class Listener:
    """An internal service on 127.0.0.1 (and ::1): counts every TCP connection, whatever comes over it."""

    port: int = 0
    port6: int | None = None
    connections: list[str] = field(default_factory=list)

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(str(writer.get_extra_info("peername")))
        writer.close()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    found = Listener()
    servers = [await asyncio.start_server(found.accept, "127.0.0.1", 0)]
    found.port = servers[0].sockets[0].getsockname()[1]
    with contextlib.suppress(OSError):  # no IPv6 loopback on this machine: the ::1 cases still must be refused
        servers.append(await asyncio.start_server(found.accept, "::1", 0))
        found.port6 = servers[1].sockets[0].getsockname()[1]
    yield found
    for server in servers:
        server.close()


def answers(*rounds: list[str]) -> safe_url.Resolver:
    """A name server whose answer changes on each lookup (DNS rebinding: public first, then loopback)."""
    queue = [[ip_address(a) for a in answer] for answer in rounds]

    async def resolve(host: str, port: int) -> list[safe_url.IPAddress]:
        return queue.pop(0)

    return resolve


async def test_dns_rebinding_between_check_and_connect_cannot_redirect(listener: Listener) -> None:
    endpoint = f"https://push.rebind.test:{listener.port}/wp"
    resolver = answers(["8.8.8.8"], ["127.0.0.1"])
    await safe_url.check(endpoint, resolver=resolver)  # at registration it answered a public address
    client = safe_url.PublicClient(resolver=resolver)
    with pytest.raises(safe_url.UnsafeURL):  # at send time it answers loopback: refused before connecting
        await client.post(endpoint, content=b"x")
    await client.aclose()
    assert listener.connections == []


@dataclass
class Recording(httpcore.AsyncNetworkBackend):
    connected: list[tuple[str, int]] = field(default_factory=list)

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        self.connected.append((host, port))
        raise httpcore.ConnectError("recorded, not connected")


async def test_the_connection_goes_to_the_checked_address_not_to_a_second_lookup() -> None:
    backend = safe_url.PublicOnlyBackend(answers(["8.8.8.8", "2606:4700:4700::1111"], ["127.0.0.1"]))
    backend.backend = recording = Recording()
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("push.example.test", 443)
    assert recording.connected == [("8.8.8.8", 443), ("2606:4700:4700::1111", 443)]  # each checked one, by address
    with pytest.raises(safe_url.UnsafeURL):  # the next connection looks up again, and is refused
        await backend.connect_tcp("push.example.test", 443)
    assert len(recording.connected) == 2
    mixed = safe_url.PublicOnlyBackend(answers(["8.8.8.8", "10.0.0.1"]))  # one internal answer refuses all
    mixed.backend = recording
    with pytest.raises(safe_url.UnsafeURL):
        await mixed.connect_tcp("push.example.test", 443)
    assert len(recording.connected) == 2
