"""Clients the tests use: REST over aiohttp, Socket.IO over real websockets, server subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from tests.contract import CONTRACT

_names = itertools.count()
PASSWORD = "plenty-long-passphrase-42"


@dataclass
class User:
    id: str
    email: str
    role: str
    access_token: str
    refresh_token: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


class Events:
    """Collects events a Socket.IO client receives; ``wait`` for one to arrive."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []
        self._cond = asyncio.Condition()

    async def add(self, name: str, data: Any) -> None:
        CONTRACT.push(name, data)
        async with self._cond:
            self.items.append((name, data))
            self._cond.notify_all()

    def of(self, name: str) -> list[Any]:
        return [d for n, d in self.items if n == name]

    async def wait(self, name: str, count: int = 1, timeout: float = 5.0) -> list[Any]:
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(lambda: len(self.of(name)) >= count), timeout)
        return self.of(name)


class Sock:
    """A connected Socket.IO client recording every event it receives."""

    def __init__(self, client: socketio.AsyncClient, events: Events) -> None:
        self.client = client
        self.events = events

    async def call(self, event: str, data: Any = None, timeout: float = 10) -> dict[str, Any]:
        reply = await self.client.call(event, data, timeout=timeout)
        CONTRACT.ack(event, reply)
        return reply

    async def ok(self, event: str, data: Any = None) -> Any:
        reply = await self.call(event, data)
        assert reply.get("ok") is True, reply
        return reply["data"]

    async def close(self) -> None:
        await self.client.disconnect()


async def connect(base_url: str, token: str | None, transports: tuple[str, ...] = ("websocket",),
                  auth: dict[str, str] | None = None) -> Sock:
    """A socket recording what it receives; ``auth`` (e.g. a device credential) instead of a user token."""
    client = socketio.AsyncClient(reconnection=False)
    events = Events()

    @client.on("*")
    async def catch_all(event: str, data: Any = None) -> None:
        await events.add(event, data)

    if auth is None and token is not None:
        auth = {"token": token}
    await client.connect(base_url, auth=auth,
                         transports=list(transports), wait_timeout=10)
    return Sock(client, events)


async def connect_refused(base_url: str, auth: Any) -> Any:
    """Try to connect; return the uniform error the server refused with (``connect_error``'s ``data``)."""
    client = socketio.AsyncClient(reconnection=False)
    refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    @client.on("connect_error")
    async def on_error(data: Any) -> None:
        if not refused.done():
            refused.set_result(data)

    try:
        await client.connect(base_url, auth=auth, transports=["websocket"], wait_timeout=5)
    except socketio.exceptions.ConnectionError:
        pass
    else:
        await client.disconnect()
        raise AssertionError("connection was accepted")
    data = await asyncio.wait_for(refused, 5)
    assert isinstance(data.get("message"), str), data
    return data["data"]


class Api:
    """``app``: the server is in this process; ``operator_env``: the environment of a server subprocess, for the
    operator's commands (``healthmate org create``) the clinicians' organisation is made with."""

    def __init__(self, base_url: str, app: web.Application | None = None,
                 operator_env: dict[str, str] | None = None) -> None:
        self.base_url = base_url
        self.app = app
        self.operator_env = operator_env
        self.http = aiohttp.ClientSession()
        self.sockets: list[Sock] = []
        self._admin: tuple[User, str] | None = None

    @classmethod
    def of(cls, server: TestServer) -> Api:
        """A client of a test server running in this process (``aiohttp_server(create_app(settings))``)."""
        return cls(str(server.make_url("")).rstrip("/"), server.app)

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for s in self.sockets:
            await s.client.disconnect()
        await self.http.close()

    async def request(self, method: str, path: str, user: User | None = None, **kwargs: Any) -> tuple[int, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if user is not None:
            headers.update(user.auth)
        async with self.http.request(method, self.base_url + path, headers=headers, **kwargs) as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.read()
            CONTRACT.response(method, path, resp.status, resp.content_type, body)
            return resp.status, body

    async def register(self, role: str = "patient", name: str | None = None, **extra: Any) -> User:
        """A new account; a clinician is invited by the admin of a test organisation and accepts (clinicians
        cannot register themselves)."""
        n = next(_names)
        email = f"{role}{n}-{os.getpid()}@example.org"
        if role == "clinician":
            admin, org_id = await self.org_admin()
            token = await self.invite(admin, org_id, email)
            return await self.accept(token, email, name or f"Clinician {n}")
        status, body = await self.request("POST", "/api/auth/register", json={
            "email": email, "password": PASSWORD, "name": name or f"{role.title()} {n}", "role": role, **extra})
        assert status == 201, body
        return User(body["user"]["id"], email, role, body["access_token"], body["refresh_token"], body["user"])

    async def org_admin(self) -> tuple[User, str]:
        """The admin of this client's test organisation and its id, made by the operator on first use."""
        if self._admin is None:
            email = f"admin{next(_names)}-{os.getpid()}@example.org"
            org_id, token = await self.operator_org("Test clinic", email)
            self._admin = await self.accept(token, email, "Org Admin"), org_id
        return self._admin

    async def operator_org(self, name: str, admin_email: str) -> tuple[str, str]:
        """``healthmate org create NAME --admin EMAIL`` for an email with no account: the org's id and the token
        of the admin's invitation (the function the command runs, for a server in this process)."""
        if self.app is not None:
            from server.care.orgs import create_org

            org, _, token = await create_org(name, admin_email, 3600)
            assert token is not None
            return str(org.id), token
        assert self.operator_env is not None, "give Api(url, operator_env=...) to make clinicians on a subprocess"
        out = await run_cli(self.operator_env, "org", "create", name, "--admin", admin_email)
        return out.split("created: ", 1)[1].split()[0], out.split("#invitation=", 1)[1].split()[0]

    async def invite(self, admin: User, org_id: str, email: str, role: str = "clinician") -> str:
        """The admin invites ``email``; the invitation's token, from the link the admin is shown."""
        status, body = await self.request("POST", f"/api/orgs/{org_id}/invitations", admin,
                                          json={"email": email, "role": role})
        assert status == 201, body
        return body["link"].split("#invitation=", 1)[1]

    async def accept(self, token: str, email: str, name: str) -> User:
        status, body = await self.request("POST", "/api/invitations/accept", json={
            "token": token, "email": email, "name": name, "password": PASSWORD})
        assert status == 201, body
        return User(body["user"]["id"], email, "clinician", body["access_token"], body["refresh_token"], body["user"])

    async def socket(self, user: User | None = None, token: str | None = None) -> Sock:
        s = await connect(self.base_url, token if token is not None else user.access_token if user else None)
        self.sockets.append(s)
        return s

    async def link(self, patient: User, member: User) -> dict[str, Any]:
        status, code = await self.request("POST", "/api/links/codes", patient)
        assert status == 201, code
        status, link = await self.request("POST", "/api/links/redeem", member, json={"code": code["code"]})
        assert status == 201, link
        return link


class Metrics:
    """A ``/metrics`` scrape, parsed by prometheus-client's own parser: ``value(name, **labels)`` (0 if absent)."""

    def __init__(self, text: str) -> None:
        self.samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                        for family in text_string_to_metric_families(text) for s in family.samples}

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(labels)[label] for n, labels in self.samples if n == name}


async def scrape(http: aiohttp.ClientSession, base_url: str, **kwargs: Any) -> Metrics:
    async with http.get(base_url + "/metrics", **kwargs) as resp:
        assert resp.status == 200, await resp.text()
        return Metrics(await resp.text())


async def scrape_until(http: aiohttp.ClientSession, base_url: str, ok: Callable[[Metrics], bool]) -> Metrics:
    """A scrape once ``ok`` holds of it, for what the server counts a moment after the fact (a socket's close,
    the store driver's view, which it publishes within a second, a gauge sampled each second)."""
    for _ in range(100):
        metrics = await scrape(http, base_url)
        if ok(metrics):
            return metrics
        await asyncio.sleep(0.1)
    raise AssertionError("the metrics never got there")


_dbs = itertools.count()


async def run_cli(env: dict[str, str], *args: str) -> str:
    """``healthmate ARGS`` with a server's environment; its output (it must succeed)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "server.cli", *args, env={**os.environ, **env},
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode()


def process_alive(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit is reaped by whoever adopted it, maybe late)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


def process_env(store_url: str, data_dir: Any, redis_url: str = "", **settings: object) -> dict[str, str]:
    """The environment of a ``healthmate serve`` subprocess on the test store (a fresh database) and
    Redis; ``settings`` by name, e.g. ``call_grace_s=5`` for ``HEALTHMATE_CALL_GRACE_S``."""
    from tests.conftest import TEST_LIMITS, TEST_SECRET

    return {"HEALTHMATE_MONGODB_URL": store_url, "HEALTHMATE_MONGODB_DB": f"hm_proc_{os.getpid()}_{next(_dbs)}",
            "HEALTHMATE_REDIS_URL": redis_url, "HEALTHMATE_JWT_SECRET": TEST_SECRET,
            "HEALTHMATE_DATA_DIR": str(data_dir),
            **{f"HEALTHMATE_{name.upper()}": str(value) for name, value in {**TEST_LIMITS, **settings}.items()}}


class ServerProcess:
    """``healthmate serve`` in a subprocess, for multi-process and restart tests."""

    def __init__(self, env: dict[str, str], port: int, args: tuple[str, ...] = ()) -> None:
        # The per-address registration cap is lifted as in-process tests lift it: every test registers from
        # 127.0.0.1 and the counters live in the session's shared Redis.
        self.env = {**os.environ, "HEALTHMATE_REGISTER_MAX_PER_IP": "1000000", **env,
                    "HEALTHMATE_PORT": str(port), "HEALTHMATE_HOST": "127.0.0.1"}
        self.port = port
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.output: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 30) -> ServerProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", *self.args], env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        asyncio.get_running_loop().run_in_executor(None, self._drain)
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError("server exited:\n" + "".join(self.output))
                try:
                    async with http.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError("server not ready:\n" + "".join(self.output))
                await asyncio.sleep(0.1)

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.decode(errors="replace"))

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return await asyncio.get_running_loop().run_in_executor(None, self.proc.wait, 20)


@contextlib.asynccontextmanager
async def server_processes(*envs: dict[str, str]) -> AsyncIterator[tuple[ServerProcess, ...]]:
    """One ``healthmate serve`` per environment, each on a free port, started together and stopped together."""
    from server.infra.embedded_store import free_port

    procs = [ServerProcess(env, free_port()) for env in envs]
    started = await asyncio.gather(*(p.start() for p in procs), return_exceptions=True)
    try:
        if failed := next((r for r in started if isinstance(r, BaseException)), None):
            raise failed  # (after stopping the others: a process left running holds its output's reader thread)
        yield tuple(procs)
    finally:
        await asyncio.gather(*(p.stop() for p in procs if p.proc is not None))


async def raw_socket(api: Api, auth: dict[str, str]) -> aiohttp.ClientWebSocketResponse:
    """A websocket speaking the Socket.IO protocol by hand (to send what no library client would)."""
    ws = await api.http.ws_connect(api.base_url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket")
    assert (await ws.receive_str(timeout=5)).startswith("0{")
    await ws.send_str("40" + json.dumps(auth))
    assert (await ws.receive_str(timeout=5)).startswith("40{")
    return ws


async def raw_call(ws: aiohttp.ClientWebSocketResponse, ack: int, event_and_payload: str) -> dict[str, Any]:
    await ws.send_str(f"42{ack}[{event_and_payload}]")
    while True:
        message = await ws.receive_str(timeout=5)
        if message.startswith(f"43{ack}"):
            return json.loads(message[2 + len(str(ack)):])[0]
