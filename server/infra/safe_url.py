"""Sending to a URL a user gave the server, without server-side request forgery.

A user-supplied URL (a Web Push subscription's endpoint) must be ``https`` and its host must resolve only
to public addresses. ``is_public`` is the standard library's ``ipaddress.is_global`` (which refuses loopback,
RFC 1918 private, shared CGNAT 100.64/10, link-local, unspecified, documentation, benchmarking, IETF
protocol, IPv6 unique-local...) minus what ``is_global`` still lets through: multicast, reserved (240/4,
IPv4-compatible ``::a.b.c.d``), IPv6 site-local, and IPv6 forms that carry an IPv4 address, judged by that
address (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``).

The check runs twice:

- ``check(url)`` when the URL is given (``push:register``): ``UnsafeURL`` (``unsafe_url``, 422) if it is not
  https or its host resolves to any address that is not public (or does not resolve).
- ``PublicClient.post(url)`` when it is used: not https is refused before any connection; then the check
  runs inside the connection (an httpcore network backend), which resolves the name once, refuses if any
  address is not public, and connects to an address it has just checked. So a name that answered a public
  address at registration and answers 127.0.0.1 now (DNS rebinding) is refused, and no second lookup can
  slip in between check and connect. Redirects are not followed: a 3xx is the answer.

Origins the operator lists as trusted (``HEALTHMATE_WEBPUSH_TRUSTED_ORIGINS``, e.g. a push service it runs
on its own network) are exempt, matched exactly: same scheme, host and port. Operator-configured endpoints
(FCM, APNs, the webhooks) never come here: they are trusted as configured.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

import httpcore
import httpx

from server.core.config import ConfigError
from server.core.errors import ApiError

IPAddress = IPv4Address | IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
DEFAULT_PORTS = {"http": 80, "https": 443}
RESOLVE_TIMEOUT_S = 5.0
_NAT64 = ip_network("64:ff9b::/96")


class UnsafeURL(ApiError):
    """A user-supplied URL the server will not send to; ``details.reason`` is ``not_https``, ``not_public``
    (which includes "does not resolve": the server's view of DNS is not told apart) or ``malformed``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__("unsafe_url", f"This URL is refused: {message}", 422, {"reason": reason})

    @classmethod
    def not_public(cls) -> UnsafeURL:
        return cls("not_public", "its host must resolve only to public internet addresses")


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is on the public internet, and so not one of the server's own or its network's."""
    if isinstance(address, IPv6Address):
        inner = address.ipv4_mapped or (IPv4Address(int(address) & 0xFFFF_FFFF) if address in _NAT64 else None)
        if inner is not None:
            return is_public(inner)
        if address.is_site_local or (address.sixtofour is not None and not is_public(address.sixtofour)):
            return False
    return address.is_global and not address.is_multicast and not address.is_reserved


async def resolve(host: str, port: int) -> list[IPAddress]:
    """The system resolver's addresses for ``host`` (an IP literal is its own); ``OSError`` if none, or
    ``TimeoutError`` (an ``OSError`` too) after ``RESOLVE_TIMEOUT_S``: a slow name server holds nothing long."""
    async with asyncio.timeout(RESOLVE_TIMEOUT_S):
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ip_address(info[4][0]) for info in infos))


async def public_addresses(host: str, port: int, resolver: Resolver = resolve) -> list[IPAddress]:
    """Every address of ``host``, all of them public, or ``UnsafeURL``; ``OSError`` if it does not resolve."""
    addresses = await resolver(host, port)
    if not addresses or not all(is_public(a) for a in addresses):
        raise UnsafeURL.not_public()
    return addresses


def _parsed(url: str | httpx.URL) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise UnsafeURL("malformed", "it is not a URL") from None
    if parsed.scheme not in DEFAULT_PORTS or not parsed.host:
        raise UnsafeURL("not_https", "it must be an https URL")
    return parsed


def origin(url: str | httpx.URL) -> str:
    """``scheme://host:port``, the port always written, for exact comparison."""
    parsed = _parsed(url)
    return f"{parsed.scheme}://{parsed.host}:{parsed.port or DEFAULT_PORTS[parsed.scheme]}"


def trusted_origins(values: Iterable[str]) -> frozenset[str]:
    """The operator's list, normalised; anything but ``http(s)://host[:port]`` stops start-up."""
    out = set()
    for value in values:
        try:
            parsed = httpx.URL(value)
        except httpx.InvalidURL:
            parsed = httpx.URL()
        if parsed.scheme not in DEFAULT_PORTS or not parsed.host or parsed.raw_path not in (b"", b"/") \
                or parsed.query or parsed.userinfo:
            raise ConfigError(f"HEALTHMATE_WEBPUSH_TRUSTED_ORIGINS: {value!r} is not an origin (scheme://host[:port])")
        out.add(origin(parsed))
    return frozenset(out)


def _allowed(url: str | httpx.URL, trusted: frozenset[str]) -> tuple[httpx.URL, bool]:
    """The parsed URL and whether it is at a trusted origin; ``UnsafeURL`` if neither that nor https, or if
    its host is an IP literal that is not public (refused without a lookup)."""
    parsed = _parsed(url)
    if origin(parsed) in trusted:
        return parsed, True
    if parsed.scheme != "https":
        raise UnsafeURL("not_https", "it must be an https URL")
    try:
        literal = ip_address(parsed.host)
    except ValueError:
        return parsed, False
    if not is_public(literal):
        raise UnsafeURL.not_public()
    return parsed, False


async def check(url: str, trusted: frozenset[str] = frozenset(), resolver: Resolver = resolve) -> None:
    """When a user gives ``url``: https and public (or at a trusted origin), else ``UnsafeURL``."""
    parsed, is_trusted = _allowed(url, trusted)
    if is_trusted:
        return
    try:
        await public_addresses(parsed.host, parsed.port or 443, resolver)
    except OSError:
        raise UnsafeURL.not_public() from None


class PublicOnlyBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections to checked public addresses only: one lookup, every answer checked, then a
    connection to one of those very addresses (TLS still verifies, and SNI names, the URL's host)."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.backend = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109 (httpcore's)
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await public_addresses(host, port, self.resolver)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from None
        failure: Exception = httpcore.ConnectError(f"no address of {host!r} answered")
        for address in addresses:
            try:
                return await self.backend.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure

    async def sleep(self, seconds: float) -> None:
        await self.backend.sleep(seconds)


class _PublicTransport(httpx.AsyncHTTPTransport):
    def __init__(self, resolver: Resolver) -> None:
        super().__init__(trust_env=False)
        # httpx takes no network backend (encode/httpx#3749), so its pool is rebuilt with ours.
        self._pool = httpcore.AsyncConnectionPool(ssl_context=httpx.create_ssl_context(trust_env=False),
                                                  network_backend=PublicOnlyBackend(resolver), max_connections=100,
                                                  keepalive_expiry=5.0)


class PublicClient:
    """POSTs to user-supplied URLs: https to checked public addresses only, or to a trusted origin.
    ``UnsafeURL`` when refused (before any connection), ``httpx.HTTPError`` for the network's failures."""

    def __init__(self, trusted: frozenset[str] = frozenset(), resolver: Resolver = resolve,
                 timeout_s: float = 10.0) -> None:
        self.trusted = trusted
        self._public = httpx.AsyncClient(transport=_PublicTransport(resolver), timeout=timeout_s, trust_env=False)
        self._trusted = httpx.AsyncClient(timeout=timeout_s, trust_env=False)

    def allowed(self, url: str | httpx.URL) -> httpx.URL:
        """``url`` parsed, if it may be posted to as far as can be told without a lookup, else ``UnsafeURL``."""
        return _allowed(url, self.trusted)[0]

    async def post(self, url: str | httpx.URL, **kwargs: Any) -> httpx.Response:
        parsed, is_trusted = _allowed(url, self.trusted)
        return await (self._trusted if is_trusted else self._public).post(parsed, **kwargs)

    async def aclose(self) -> None:
        await self._public.aclose()
        await self._trusted.aclose()
