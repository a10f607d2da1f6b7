"""``/metrics``: what the server counts moves by exactly what was done, no client can grow the number of
series, and only the operator's scraper reads it (loopback, or the metrics token)."""

from __future__ import annotations

import secrets
from pathlib import Path

from server.app import SERVER, create_app
from server.infra.embedded_store import EmbeddedStore
from tests.conftest import make_settings
from tests.helpers import Api, Metrics, scrape, scrape_until

OUTSIDE = {"X-Forwarded-For": "203.0.113.9"}  # what a trusted proxy appends for a client elsewhere


def _delta(before: Metrics, after: Metrics, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


async def test_metrics_count_events_connections_requests_and_store_commands(api: Api) -> None:
    assert api.app is not None
    before = await scrape(api.http, api.base_url)
    patient = await api.register("patient")
    made_up = [f"made-up:{secrets.token_hex(4)}" for _ in range(3)]
    status, _ = await api.request("GET", f"/api/{made_up[0]}")
    assert status == 404
    sock = await api.socket(patient)
    await sock.ok("sys:ping", {"t": 1.0})
    refused = await sock.call("sys:ping", {"t": "soon"})
    assert refused["error"]["code"] == "invalid_payload"
    for name in made_up:
        assert (await sock.call(name))["error"]["code"] == "unknown_event"
    after = await scrape(api.http, api.base_url)

    events = "healthmate_events_total"
    assert _delta(before, after, events, event="sys:ping", outcome="ok") == 1
    assert _delta(before, after, events, event="sys:ping", outcome="invalid_payload") == 1
    assert _delta(before, after, events, event="other", outcome="unknown_event") == 3
    # Bounded: event labels are registered names or "other"; routes are patterns; no client text anywhere.
    assert after.label_values(events, "event") <= set(api.app[SERVER].realtime.router.events) | {"other"}
    assert not [labels for _, labels in after.samples if any("made-up" in v for _, v in labels)]
    requests = "healthmate_http_requests_total"
    assert _delta(before, after, requests, method="POST", route="/api/auth/register", status="201") == 1
    assert _delta(before, after, requests, method="GET", route="unmatched", status="404") == 1
    assert _delta(before, after, requests, method="GET", route="/metrics", status="200") == 1  # the first scrape
    assert _delta(before, after, "healthmate_connections", role="patient") == 1
    assert _delta(before, after, "healthmate_store_commands_total", command="insert") >= 2  # the user, the session
    await scrape_until(api.http, api.base_url, lambda m: m.value("healthmate_store_up") == 1)  # within a second

    await sock.close()
    websocket = {"method": "GET", "route": "/socket.io/", "status": "101"}  # counted once it closed
    await scrape_until(api.http, api.base_url, lambda m: (
        _delta(before, m, "healthmate_connections", role="patient"),
        _delta(before, m, "healthmate_http_requests_total", **websocket)) == (0, 1))


async def test_metrics_are_for_loopback_or_the_metrics_token(store: EmbeddedStore, tmp_path: Path,
                                                              aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    token = secrets.token_urlsafe(24)
    for metrics_token in (None, token):
        extra = {"metrics_token": metrics_token} if metrics_token else {}
        settings = make_settings(store.url, tmp_path, trust_forwarded=True, **extra)
        srv = await aiohttp_server(create_app(settings))
        async with Api.of(srv) as api:
            if metrics_token is None:
                status, body = await api.request("GET", "/metrics", headers=OUTSIDE)
                assert status == 403 and body["error"]["code"] == "forbidden"
                await scrape(api.http, api.base_url)  # from loopback
            else:
                for headers in ({}, {"Authorization": "Bearer not-the-token"}):
                    status, body = await api.request("GET", "/metrics", headers=headers)  # loopback or not
                    assert status == 401 and body["error"]["code"] == "unauthorized"
                await scrape(api.http, api.base_url, headers={**OUTSIDE, "Authorization": f"Bearer {token}"})
