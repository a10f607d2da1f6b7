"""The real app on a loopback socket with chosen settings (the security tests' limits), optionally on the
test Redis, whose throttle counters are cleared first so earlier tests' attempts do not count."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from server.app import create_app
from server.infra.embedded_store import EmbeddedStore
from server.infra.ratelimit import REDIS_PREFIX
from tests.conftest import make_settings
from tests.helpers import Api


@contextlib.asynccontextmanager
async def serve(aiohttp_server: Any, store: EmbeddedStore, tmp_path: Path, redis_url: str | None = None,
                **settings: object) -> AsyncIterator[Api]:
    """The app with ``settings``; its throttles count in windows of a million seconds unless told (a test
    counting attempts across a 15-minute window's end saw the count start over: 10 attempts let through of 4)."""
    settings.setdefault("login_failure_window_s", 1_000_000)
    if redis_url is not None:
        redis = Redis.from_url(redis_url)
        keys = [k async for k in redis.scan_iter(REDIS_PREFIX + "*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
    app = create_app(make_settings(store.url, tmp_path, redis_url=redis_url, **settings))
    server = await aiohttp_server(app)
    async with Api(str(server.make_url("")).rstrip("/"), app) as api:
        yield api
