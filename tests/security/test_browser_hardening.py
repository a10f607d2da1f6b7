"""The dashboard is served with a Content-Security-Policy that allows no inline script (an injected
<img onerror=...> does not run), may not be framed, sends no referrer and is not type-sniffed; HSTS is
sent only over TLS (here: behind a trusted proxy that says https)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.app import create_app
from server.infra.embedded_store import EmbeddedStore
from tests.browser import chromium, sign_in
from tests.conftest import make_settings
from tests.helpers import Api


@pytest.fixture
async def proxied(store: EmbeddedStore, tmp_path: Path, aiohttp_server) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    server = await aiohttp_server(create_app(make_settings(store.url, tmp_path, trust_forwarded=True)))
    async with Api(str(server.make_url("")).rstrip("/"), server.app) as api:
        yield api


async def _headers(api: Api, path: str, **headers: str) -> dict[str, str]:
    async with api.http.get(api.base_url + path, headers=headers) as resp:
        return dict(resp.headers)


async def test_every_response_carries_the_hardening_headers(api: Api, proxied: Api) -> None:
    for path in ("/", "/static/app.js", "/api/openapi.yaml", "/api/no-such-route"):
        headers = await _headers(api, path)
        csp = dict(part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";"))
        assert csp["script-src"] == "'self'" and csp["frame-ancestors"] == "'none'" and csp["object-src"] == "'none'"
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
        assert headers["Referrer-Policy"] == "no-referrer" and headers["X-Content-Type-Options"] == "nosniff"
        assert "Strict-Transport-Security" not in headers  # plain HTTP: HSTS would mean nothing
    assert "Strict-Transport-Security" not in await _headers(api, "/", **{"X-Forwarded-Proto": "https"})  # untrusted
    assert (await _headers(proxied, "/", **{"X-Forwarded-Proto": "https"}))["Strict-Transport-Security"].startswith(
        "max-age=")


async def test_the_dashboard_works_under_its_policy_and_injected_script_does_not_run(api: Api) -> None:
    clinician = await api.register("clinician")
    violations: list[str] = []
    async with chromium() as browser:
        page = await browser.new_page()  # the policy enforced
        page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
        await sign_in(page, api.base_url, clinician)
        assert violations == []  # the page's own code runs under the policy
        await page.evaluate("""document.body.insertAdjacentHTML('beforeend',
            '<img src="/nothing.png" onerror="window.__pwned = 1">')""")
        await asyncio.sleep(0.5)
        assert await page.evaluate("window.__pwned") is None
        assert any("inline event handler" in v or "script-src" in v for v in violations), violations
