"""Real components for the tests: a Redis server (Debian's redis-server), the embedded store
(SecantusDB as a child process, reached over the wire), and the app on a real TCP socket."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis import Redis

from server.app import create_app
from server.config import Settings, load_settings
from server.embedded_store import EmbeddedStore, free_port
from tests.helpers import Api

TEST_SECRET = "test-secret-" + "x" * 40
_db_counter = itertools.count()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed; `make test` installs it (apt-get install redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except Exception:
            import time

            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedStore]:
    s = EmbeddedStore(tmp_path_factory.mktemp("store"))
    await s.start()
    yield s
    await s.stop()


def make_settings(store_url: str, tmp: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "mongodb_url": store_url, "mongodb_db": f"hm_test_{next(_db_counter)}", "jwt_secret": TEST_SECRET,
        "data_dir": tmp, "port": 0,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
async def settings(store: EmbeddedStore, tmp_path: Path) -> Settings:
    return make_settings(store.url, tmp_path)


@pytest.fixture
async def api(settings: Settings, aiohttp_server) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    """The app on a real loopback socket, with a client for REST and Socket.IO."""
    server = await aiohttp_server(create_app(settings))
    async with Api(str(server.make_url("")).rstrip("/"), server.app) as client:
        yield client
    await asyncio.sleep(0)
