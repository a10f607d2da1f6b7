"""``GET /metrics``: the process's Prometheus metrics (``server/infra/metrics.py`` and whatever else counts into
prometheus-client's default registry), or, under ``healthmate serve --workers N``, those of every worker added
up (multiprocess mode: the parent gives the workers a private ``PROMETHEUS_MULTIPROC_DIR``).

Operational counts are not for everyone: with ``HEALTHMATE_METRICS_TOKEN`` set, a scrape must send it as a
bearer token; without it, only a loopback client (the address as ``Rest.client`` sees it, so behind a trusted
proxy the address that connected to the proxy) may scrape."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from prometheus_client.exposition import choose_encoder

from server.core.config import Settings
from server.core.errors import ApiError
from server.infra.metrics import MULTIPROC_ENV
from server.transport.mount import Mount


def _loopback(addr: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(addr or "")
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _bearer_matches(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def exposition(accept: str | None) -> tuple[bytes, str]:
    """The metrics in the format the scraper accepts (Prometheus text, or OpenMetrics if it asks)."""
    registry = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def mount(m: Mount, settings: Settings) -> None:
    token = settings.metrics_token.get_secret_value() if settings.metrics_token is not None else None

    async def metrics(request: web.Request) -> web.Response:
        """Prometheus metrics (docs/operations.md, Metrics); under --workers, every worker's added up.

        With HEALTHMATE_METRICS_TOKEN set, send it as a bearer token (not an access token); without it, only
        loopback clients (behind a trusted proxy: the address the proxy saw) may scrape. Prometheus text format
        (version 0.0.4), or OpenMetrics if the Accept header asks for it."""
        if token is not None:
            if not _bearer_matches(request, token):
                raise ApiError("unauthorized", "Send the metrics token: Authorization: Bearer <token>", 401,
                               headers={"WWW-Authenticate": "Bearer"})
        elif not _loopback(m.rest.client(request).addr):
            raise ApiError("forbidden", "Metrics are served to loopback clients only; set HEALTHMATE_METRICS_TOKEN "
                           "to scrape from elsewhere", 403)
        body, content_type = await asyncio.to_thread(exposition, request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    m.route("GET", "/metrics", metrics, media="text/plain", public=True)
