"""No server-side request forgery through Web Push (issue 14, item 5). A subscription's endpoint is a URL a
user gives and the server later POSTs to: without a check, a user registers http://127.0.0.1:<port>/ (or
https://localhost, https://10.0.0.1, https://169.254.169.254...) and every alert makes the server send a
request into its own host or network. Here a listener on 127.0.0.1 (and ::1) stands for such an internal
service, and it is never connected to: not at registration, not when an alert triggers pushes, not for a
subscription stored before the check (refused at send time, logged, dropped, not retried), not after a
redirect, and not when DNS answers differently between the check and the connection."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import httpcore
import pytest
from aiohttp import web
from beanie import PydanticObjectId
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server.alerts.documents import PushEntry, PushToken
from server.app import SERVER, create_app
from server.core.config import ConfigError
from server.infra import safe_url
from server.infra.embedded_store import EmbeddedStore
from tests.alert_clients import crisis, device_sock
from tests.conftest import make_settings
from tests.helpers import Api, User

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


@dataclass
class PushService:
    """The operator's own push service (a trusted origin): answers 201, or a redirect on /redirect."""

    base: str = ""
    paths: list[str] = field(default_factory=list)
    redirect_to: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.paths.append(request.path)
        if request.path == "/redirect":
            return web.Response(status=307, headers={"Location": self.redirect_to})
        return web.Response(status=201)


@pytest.fixture
async def push_service(aiohttp_server: Any) -> PushService:
    service = PushService()
    app = web.Application()
    app.router.add_post("/{tail:.*}", service.handle)
    service.base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    return service


def pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def subscription(endpoint: str) -> dict[str, Any]:
    browser = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = browser.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return {"endpoint": endpoint, "keys": {"p256dh": b64(point), "auth": b64(os.urandom(16))}}


@pytest.fixture
async def api(store: EmbeddedStore, tmp_path: Path, aiohttp_server: Any,
              push_service: PushService) -> AsyncIterator[Api]:
    """Web Push on, with the operator's push service as the one trusted origin."""
    settings = make_settings(store.url, tmp_path, vapid_private_key=pem(ec.generate_private_key(ec.SECP256R1())),
                             vapid_subject="mailto:ops@healthmate.example", push_retry_base_s=0.01,
                             webpush_trusted_origins=[push_service.base])
    server = await aiohttp_server(create_app(settings))
    async with Api(str(server.make_url("")).rstrip("/"), server.app) as client:
        yield client


def attacks(listener: Listener) -> list[str]:
    """Endpoints a user may try: the listener itself, named or written otherwise, and internal ranges that
    are never contacted here (the refusal comes first)."""
    port = listener.port
    return [f"http://127.0.0.1:{port}/wp", f"https://127.0.0.1:{port}/wp", f"https://localhost:{port}/wp",
            f"https://[::1]:{listener.port6 or port}/wp", f"https://[::ffff:127.0.0.1]:{port}/wp",
            f"https://2130706433:{port}/wp", f"https://0x7f.1:{port}/wp", f"https://0.0.0.0:{port}/wp",
            "https://10.0.0.1/wp", "https://192.168.1.1/wp", "https://100.64.0.1/wp",
            "https://169.254.169.254/latest/meta-data/", "https://[fd00::1]/wp", "https://[fe80::1]/wp",
            "http://8.8.8.8/wp"]  # public, but not https


async def test_unsafe_endpoints_are_refused_at_registration(api: Api, listener: Listener,
                                                            push_service: PushService) -> None:
    user = await api.register("caregiver")
    sock = await device_sock(api.base_url, user, "browser-1")
    for endpoint in attacks(listener):
        reply = await sock.call("push:register", {"provider": "webpush", "subscription": subscription(endpoint)})
        assert reply["ok"] is False and reply["error"]["code"] == "unsafe_url", (endpoint, reply)
        details = reply["error"]["details"]
        assert details["field"] == "subscription.endpoint", details
        assert details["reason"] == ("not_https" if endpoint.startswith("http:") else "not_public"), (endpoint, details)
    # The trusted origin is matched exactly: the operator's push service's host on another scheme or port is not.
    host_port = push_service.base.removeprefix("http://")
    for near in (f"https://{host_port}/wp", f"http://{host_port.rsplit(':', 1)[0]}:{listener.port}/wp"):
        reply = await sock.call("push:register", {"provider": "webpush", "subscription": subscription(near)})
        assert reply["error"]["code"] == "unsafe_url", (near, reply)
    assert await PushToken.find(PushToken.user_id == PydanticObjectId(user.id)).count() == 0
    # What is allowed: a public https endpoint (stored, not contacted here), and the operator's push service.
    await sock.ok("push:register", {"provider": "webpush", "subscription": subscription("https://8.8.8.8/push/x")})
    sock2 = await device_sock(api.base_url, user, "browser-2")
    await sock2.ok("push:register", {"provider": "webpush", "subscription": subscription(f"{push_service.base}/wp")})
    assert await PushToken.find(PushToken.user_id == PydanticObjectId(user.id)).count() == 2
    await sock.ok("push:unregister", {})
    await sock.close()
    await sock2.close()
    assert listener.connections == []


async def stored_before_the_check(user: User, endpoints: list[str]) -> list[str]:
    """Subscriptions as an old server stored them, unchecked, written straight into the store."""
    ids = []
    for n, endpoint in enumerate(endpoints):
        token = PushToken(id=f"{user.id}:old-{n}:webpush", user_id=PydanticObjectId(user.id), device_id=f"old-{n}",
                          provider="webpush", subscription=subscription(endpoint))
        await token.insert()
        ids.append(token.id)
    return ids


async def test_old_subscriptions_to_internal_addresses_are_refused_when_an_alert_is_pushed(
        api: Api, listener: Listener, push_service: PushService, caplog: pytest.LogCaptureFixture) -> None:
    patient, carer = await api.register("patient"), await api.register("caregiver")
    await api.link(patient, carer)
    port = listener.port
    unsafe = [f"http://127.0.0.1:{port}/wp", f"https://127.0.0.1:{port}/wp", f"https://localhost:{port}/wp",
              f"https://[::1]:{listener.port6 or port}/wp", f"https://[::ffff:127.0.0.1]:{port}/wp"]
    refused = await stored_before_the_check(carer, unsafe)
    sock = await device_sock(api.base_url, carer, "laptop")
    await sock.ok("push:register", {"provider": "webpush", "subscription": subscription(f"{push_service.base}/wp")})
    await sock.close()  # the caregiver is offline now: the alert goes to their push registrations
    assert api.app is not None
    push = api.app[SERVER].push
    with caplog.at_level(logging.WARNING, logger="server.alerts.push"):
        await (await api.socket(patient)).ok("bp:add", crisis())
        for _ in range(200):  # the operator's push service got it: pushes were sent in this run
            if push_service.paths and await PushToken.find({"_id": {"$in": refused}}).count() == 0:
                break
            await asyncio.sleep(0.05)
        await push.outbox.idle()
    assert push_service.paths and set(push_service.paths) == {"/wp"}
    assert listener.connections == []
    # Each refused, logged, dropped: no retry was scheduled and nothing of them is left to send.
    assert await PushToken.find({"_id": {"$in": refused}}).count() == 0
    warned = [r.getMessage() for r in caplog.records if "webpush endpoint refused" in r.getMessage()]
    assert {token for token in refused if any(token in m for m in warned)} == set(refused), warned
    assert len(warned) == len(refused) * len(push_service.paths), warned  # once per notification: no retries
    assert await PushEntry.find_all().count() == 0
    assert await PushToken.find(PushToken.user_id == PydanticObjectId(carer.id)).count() == 1


async def test_a_redirect_from_a_push_service_is_not_followed(api: Api, listener: Listener,
                                                              push_service: PushService) -> None:
    push_service.redirect_to = f"http://127.0.0.1:{listener.port}/internal"
    user = await api.register("caregiver")
    sock = await device_sock(api.base_url, user, "phone")
    await sock.ok("push:register", {"provider": "webpush",
                                    "subscription": subscription(f"{push_service.base}/redirect")})
    await sock.close()
    assert api.app is not None
    await api.app[SERVER].notifications.notify([user.id], "reminder", "Take your pill")
    for _ in range(100):
        if push_service.paths:
            break
        await asyncio.sleep(0.05)
    await api.app[SERVER].push.outbox.idle()
    assert push_service.paths == ["/redirect"] and listener.connections == []
