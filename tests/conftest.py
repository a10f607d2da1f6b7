"""Real components for the tests: a Redis server (Debian's redis-server), the embedded store
(SecantusDB as a child process, reached over the wire), and the app on a real TCP socket."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import logging
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pymongo.message
import pytest
from pymongo import monitoring
from pymongo.errors import PyMongoError
from redis import Redis

from devices.mqtt_broker import BrokerFiles
from server.app import create_app
from server.core.config import Settings, load_settings
from server.infra.embedded_store import EmbeddedStore, free_port
from server.infra.store import make_client
from tests.contract import CONTRACT
from tests.helpers import Api
from tests.query_plans import QUERIES

TEST_SECRET = "test-secret-" + "x" * 40
# The tests make many accounts from 127.0.0.1; tests/security/ sets the real limits where it tests them.
TEST_LIMITS = {"register_max_per_ip": 1_000_000}
_db_counter = itertools.count()
monitoring.register(QUERIES)  # before any client exists: every query the project sends, for tests/test_query_plans.py
# PyMongo numbers every message it sends from the global ``random`` (``pymongo.message._randint``): a client's thread
# (the store's watchdog, a heartbeat) sending one while Hypothesis draws trips its check that strategies leave
# ``random`` alone (tests/test_fuzz.py: a deprecation warning now, an error from Hypothesis 7). Its own generator here.
pymongo.message.random = random.Random()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """tests/test_query_plans.py last: it judges the queries every other test made the server send."""
    items.sort(key=lambda item: item.path.name == "test_query_plans.py")


@pytest.fixture(autouse=True)
def contract_checked() -> Iterator[None]:
    """Every test: what its clients received matches docs/asyncapi.yaml and docs/openapi.yaml (tests/contract.py)."""
    CONTRACT.take_violations()
    yield
    violations = CONTRACT.take_violations()
    if violations:
        pytest.fail("traffic outside the contract:\n" + "\n".join(violations[:10]), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """A test still running 20 s before pytest-timeout ends it prints what each task of the event loop awaits
    (the timeout's own dump shows threads only, and a hung test is idle in the loop's ``select``), then has its
    own task cancelled: its report then shows the line it hung on, and its ``finally`` blocks still run. Timed
    like the timeout, over setup, call and teardown: a hang in a fixture's teardown shows its tasks too."""
    marker = item.get_closest_marker("timeout")
    timeout = float(marker.args[0] if marker and marker.args else item.config.getini("timeout") or 120)
    timer = threading.Timer(timeout - 20, _end_hung_test, (item.name, timeout - 20))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _running_loop(o: object) -> bool:
    try:  # (a weak proxy whose referent is gone raises on any look)
        return isinstance(o, asyncio.AbstractEventLoop) and o.is_running()
    except ReferenceError:
        return False


def _end_hung_test(test: str, after_s: float) -> None:
    """The test's own task first (what it awaits), then the others (what that may wait for); then the test's
    task is cancelled, saying why."""
    name = test.split("[")[0]
    loops = [o for o in gc.get_objects() if _running_loop(o)]
    tasks = [(loop, t) for loop in loops for t in asyncio.all_tasks(loop)]
    own = [(loop, t) for loop, t in tasks if getattr(t.get_coro(), "__name__", None) == name]
    for _, task in own + [lt for lt in tasks if lt not in own]:
        with contextlib.suppress(Exception):
            task.print_stack(limit=12, file=sys.stderr)
    for loop, task in own:
        loop.call_soon_threadsafe(task.cancel, f"{test} still running after {after_s:.0f} s: cancelled where it hung")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How much of the contract the run's traffic covered (every documented event should be)."""
    seen = CONTRACT.coverage
    if not seen:
        return
    acks = {k.split(" ", 1)[1] for k in seen if k.startswith("ack ")}
    pushes = {k.split(" ", 1)[1] for k in seen if k.startswith("push ")}
    routes = {k for k in seen if not k.startswith(("ack ", "push ", "refused "))}
    codes = len(CONTRACT.codes_seen)
    total_routes = sum(len(m) for m in CONTRACT.openapi["paths"].values())
    terminalreporter.write_line(
        f"contract coverage: {len(acks)}/{len(CONTRACT.received)} events acked, {len(pushes)}/{len(CONTRACT.pushed)} "
        f"pushed events, {len(routes)}/{total_routes} routes, {codes} error codes; "
        f"{sum(seen.values())} messages checked")
    missing = sorted((CONTRACT.received - acks) | (CONTRACT.pushed - pushes))
    if missing:
        terminalreporter.write_line("contract: events no test observed: " + ", ".join(missing))
    if os.environ.get("HEALTHMATE_CONTRACT_COVERAGE"):  # a file to add this run's coverage to (runs in parts)
        with open(os.environ["HEALTHMATE_CONTRACT_COVERAGE"], "a") as out:
            out.write(json.dumps({"seen": sorted(seen), "codes": sorted(CONTRACT.codes_seen)}) + "\n")


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


@contextlib.asynccontextmanager
async def store_of_tests(factory: pytest.TempPathFactory, name: str, **options: bool) -> AsyncIterator[EmbeddedStore]:
    """An embedded store for tests, ``hang_s`` 10 s: no test's command takes that long, and a store that wedges
    (docs/operations.md, Monitor) is back before the tests waiting for it reach their timeouts."""
    s = EmbeddedStore(factory.mktemp(name), hang_s=10, **options)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture(scope="session")
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedStore]:
    """The store most tests share, each app in a database of its own (dropped after its test). No test commands:
    the tests that hold commands with failpoints have a store of their own (tests/test_urgency.py,
    tests/test_store.py), as has the test that fills one with 50,000 readings (tests/security/test_heavy_reads.py)."""
    async with store_of_tests(tmp_path_factory, "store") as s:
        yield s


@pytest.fixture(autouse=True)
async def _test_databases_dropped(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """A test's databases on the shared store (``hm_test_<n>``, a new one for each app) are dropped once it has
    ended (this fixture's teardown comes after the test's own, so its apps are closed). Kept, each added about 35
    collections and their indexes to the store: hundreds of databases by the end of the suite, which is where the
    store wedged in three fresh runs of about a dozen (SecantusDB wedges when its working set and open writes outgrow
    its cache: docs/operations.md, Monitor). A failed drop is logged, not the test's failure."""
    store = request.getfixturevalue("store") if "store" in request.fixturenames else None
    yield
    if store is None:
        return
    client = make_client(store.url, serverSelectionTimeoutMS=15000)
    try:
        for name in await client.list_database_names():
            if name.startswith("hm_test_"):
                await client.drop_database(name)
    except PyMongoError as exc:
        logging.getLogger(__name__).warning("could not drop the test's databases: %s", exc)
    finally:
        await client.close()


def make_settings(store_url: str, tmp: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "mongodb_url": store_url, "mongodb_db": f"hm_test_{next(_db_counter)}", "jwt_secret": TEST_SECRET,
        "data_dir": tmp, "port": 0, **TEST_LIMITS,
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
    async with Api.of(server) as client:
        yield client
    await asyncio.sleep(0)


@dataclass(frozen=True)
class Broker:
    """A Mosquitto broker on a loopback port, with its password and ACL files in ``folder``."""

    port: int
    folder: Path
    bridge_url: str
    pid: int


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None:
        pytest.fail("mosquitto is not installed; `make test` installs it (apt-get install mosquitto)")
    folder = tmp_path_factory.mktemp("mqtt")
    port, password = free_port(), secrets.token_urlsafe(16)
    BrokerFiles(folder, "healthmate-bridge", password).write([])
    conf = folder / "mosquitto.conf"
    conf.write_text("\n".join([
        f"listener {port} 127.0.0.1", "allow_anonymous false", f"password_file {folder / 'passwd'}",
        f"acl_file {folder / 'acl'}", f"pid_file {folder / 'mosquitto.pid'}",
        "persistence false", "max_packet_size 1100000", "set_tcp_nodelay true",
        *(["user root"] if os.geteuid() == 0 else []), ""]))
    log = (folder / "mosquitto.log").open("wb")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("mosquitto did not start: " + (folder / "mosquitto.log").read_text())
    yield Broker(port, folder, f"mqtt://healthmate-bridge:{password}@127.0.0.1:{port}", proc.pid)
    proc.terminate()
    proc.wait(10)
    log.close()
