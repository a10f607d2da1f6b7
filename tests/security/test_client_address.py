"""The client address audited and rate-limited is the transport's; behind a trusted proxy, the one that proxy
appended to X-Forwarded-For, never an entry the client wrote itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from beanie import PydanticObjectId

from server.app import create_app
from server.care.documents import AuditEntry
from server.infra.embedded_store import EmbeddedStore
from tests.conftest import make_settings
from tests.helpers import PASSWORD, Api

SPOOFED = "6.6.6.6"
PROXY_SAW = "203.0.113.9"


@pytest.fixture(params=[False, True], ids=["direct", "behind-proxy"])
async def server(request: pytest.FixtureRequest, store: EmbeddedStore, tmp_path: Path,
                 aiohttp_server) -> AsyncIterator[tuple[Api, bool]]:  # type: ignore[no-untyped-def]
    settings = make_settings(store.url, tmp_path, trust_forwarded=request.param)
    srv = await aiohttp_server(create_app(settings))
    async with Api(str(srv.make_url("")).rstrip("/"), srv.app) as api:
        yield api, request.param


async def test_a_forged_forwarded_for_is_not_the_audited_address(server: tuple[Api, bool]) -> None:
    api, behind_proxy = server
    user = await api.register("patient")
    # nginx's proxy_add_x_forwarded_for appends the peer it saw to what the client sent.
    headers = {"X-Forwarded-For": f"{SPOOFED}, {PROXY_SAW}"}
    status, _ = await api.request("POST", "/api/auth/login", headers=headers,
                                  json={"email": user.email, "password": PASSWORD})
    assert status == 200
    login = await AuditEntry.find(AuditEntry.actor_id == PydanticObjectId(user.id),
                                  AuditEntry.action == "auth.login").to_list()
    assert [e.client_addr for e in login] == [PROXY_SAW if behind_proxy else "127.0.0.1"]
