"""The embedded store: SecantusDB run as a supervised child process.

SecantusDB is GPL-2.0-only, so it stays behind a process boundary: we start
``secantusd-py`` and talk MongoDB's wire protocol to it with the same PyMongo client
as for real MongoDB; nothing here imports it. Its Python work also stays off our GIL.
A crash is logged at ERROR and the process restarted with backoff; ``healthy`` says
whether it is up, for ``/readyz``. A store that runs but has stopped answering is ended the same way: a
watchdog reads from it every few seconds, and one that has answered before and then not for ``hang_s`` is
stopped (SIGTERM, on which SecantusDB logs its stuck threads' stacks, then SIGKILL) and so restarted. Seen
here: a connection thread stuck inside the storage engine's search while holding the store's global lock,
every other command queued behind it for good.

It runs with ``--auth``: on first start a user with a random password is created (the store is started
once without auth on loopback for that, as SecantusDB asks) and the credential kept in
``<data dir>/store_credential`` (0600), so another local user or process cannot read or change the
data by connecting to the port. The data dir is the owner's alone (0700).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Container, Iterator
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient, MongoClient

from server.core.background import cancel_and_wait
from server.infra.files import private_dir
from server.infra.metrics import EMBEDDED_STORE_RESTARTS, child

log = logging.getLogger(__name__)


def free_port(avoid: Container[int] = ()) -> int:
    """A port free now, other than ``avoid``: ports picked but not bound yet, which the system may hand out again
    (a store once started on the port its server was about to listen on)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in avoid:
            return port


def server_stores(data_dir: Path, server_port: int, bulk: bool) -> list[EmbeddedStore]:
    """A server's embedded store and, with ``bulk``, its bulk store (``<data dir>/bulk``), on ports other than
    each other's and the server's, none of which is bound until it starts."""
    main = EmbeddedStore(data_dir, port=free_port({server_port}))
    if not bulk:
        return [main]
    return [main, EmbeddedStore(data_dir / "bulk", port=free_port({server_port, main.port}), name="bulk")]


# Run in the store's child before it becomes the store: ask Linux to SIGKILL it when the server that started
# it dies outright, so no orphaned store outlives its server (the setting survives the exec). SIGKILL, not
# SIGTERM: SecantusDB's SIGTERM handler is not re-entrant, and a store that got the signal more than once
# deadlocked in it and never exited (1 start in 5 here); what it acknowledged is on disk (``--sync-on-commit``)
# and recovered at the next start. The server may have died already; then exit. Not a ``preexec_fn``: that
# would run the server's at-fork hooks in the child (see ``Child``).
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)\n"  # PR_SET_PDEATHSIG
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _dying_with_parent(cmd: list[str]) -> list[str]:
    if sys.platform != "linux":
        return cmd
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd]


def store_executable() -> str:
    beside = Path(sys.executable).parent / "secantusd-py"
    found = str(beside) if beside.exists() else shutil.which("secantusd-py")
    if not found:
        raise RuntimeError("secantusd-py not found: install the project (pip install -e .) to get secantusdb")
    return found


class Child:
    """A child process: ``subprocess.Popen`` awaited on the loop. Not ``asyncio.create_subprocess_exec``: on
    uvloop (the server's loop with ``HEALTHMATE_URGENT_FIRST=off``) that runs the server's at-fork hooks in the
    forked child, between fork and exec, and PyMongo's fails there when one of its clients is collected meanwhile
    ("dictionary changed size during iteration", a traceback in the server's log whenever the two stores start side
    by side). Popen without ``preexec_fn`` runs no Python code in the child. A thread waits for the exit."""

    def __init__(self, cmd: list[str], **popen: Any) -> None:
        self.popen = subprocess.Popen(cmd, **popen)
        self.pid = self.popen.pid
        self.terminated = False  # SIGTERM sent
        loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[int] = loop.create_future()

        def wait() -> None:
            code = self.popen.wait()
            with contextlib.suppress(RuntimeError):  # the loop closed first
                loop.call_soon_threadsafe(lambda: self._exit.done() or self._exit.set_result(code))

        threading.Thread(target=wait, daemon=True, name=f"child-{self.pid}").start()

    @property
    def returncode(self) -> int | None:
        """None until the loop has seen the exit (as asyncio's)."""
        return self._exit.result() if self._exit.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    def terminate(self) -> None:
        """SIGTERM, once: SecantusDB's handler is not re-entrant, and a shutdown may come while the watchdog is
        stopping a wedged store (both then wait for the one exit)."""
        if not self.terminated:
            self.terminated = True
            self.popen.terminate()

    def kill(self) -> None:
        self.popen.kill()


USER = "healthmate"
WATCH_EVERY_S = 5.0  # how often the watchdog reads from the store
HANG_S = 30.0  # a store that has answered before and then not for this long is wedged (no command takes this long)
TERM_GRACE_S = 10.0  # after SIGTERM, how long a wedged store gets to log its threads' stacks and exit


class EmbeddedStore:
    def __init__(self, data_dir: Path, port: int | None = None, cache_size: str = "256M",
                 test_commands: bool = False, hang_s: float = HANG_S, name: str = "main") -> None:
        self.name = name  # (the metric's label: main, or bulk)
        self.data_dir = data_dir.resolve()
        self.path = (data_dir / "db").resolve()
        self.log_path = (data_dir / "store.log").resolve()
        self.credential_path = (data_dir / "store_credential").resolve()
        self.password: str | None = None
        self.port = port or free_port()
        self.cache_size = cache_size
        self.test_commands = test_commands  # mongod's test-only commands (failpoints), for the tests only
        self.proc: Child | None = None
        self.hang_s = hang_s
        self.crashes = 0
        self.hangs = 0
        self._unwatched = 0  # steps under way during which the watchdog does not judge (unwatched())
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._watch_stop = threading.Event()

    @property
    def url(self) -> str:
        """The store's address for PyMongo, without retryable writes: SecantusDB 0.7 records every
        retryable write's outcome for 30 minutes (up to 10,000) and scans, past the cap sorts, them all
        on each new write, so after 10,000 writes its insert rate falls from ~2,000/s to ~150/s. A single
        local node has no failover for a retry to ride out; a write cut off by a store restart fails
        with ``store_unavailable`` instead of being retried."""
        login = f"{USER}:{self.password}@" if self.password else ""
        return f"mongodb://{login}127.0.0.1:{self.port}/?directConnection=true&retryWrites=false&authSource=admin"

    @property
    def healthy(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, wait_s: float = 30.0) -> str:
        self._stopping = False
        self._watch_stop = threading.Event()
        private_dir(self.data_dir)
        private_dir(self.path)
        if self.credential_path.exists():
            self.password = self.credential_path.read_text().strip()
        else:
            await self._provision(wait_s)
        await self._spawn(wait_s)
        self._supervisor = asyncio.create_task(self._supervise(), name="embedded-store-supervisor")
        threading.Thread(target=self._watch, args=(asyncio.get_running_loop(), self._watch_stop),
                         name="embedded-store-watchdog", daemon=True).start()  # (ended through its event)
        log.info("embedded store (SecantusDB) on 127.0.0.1:%d, data in %s, log in %s", self.port, self.path,
                 self.log_path)
        return self.url

    async def _provision(self, wait_s: float) -> None:
        """First start: create the store's user with a new random password, then keep it (0600)."""
        password = secrets.token_urlsafe(32)
        await self._spawn(wait_s, auth=False)
        client: AsyncMongoClient = AsyncMongoClient(self.url, serverSelectionTimeoutMS=5000)
        try:
            with contextlib.suppress(Exception):  # a data dir whose credential file was lost: replace the user
                await client.admin.command("dropUser", USER)
            await client.admin.command("createUser", USER, pwd=password, roles=["root"])
        finally:
            await client.close()
            await self._terminate()
        fd = os.open(self.credential_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password)
        self.password = password

    async def _spawn(self, wait_s: float, auth: bool = True) -> None:
        cmd = [
            store_executable(), "--host", "127.0.0.1", "--port", str(self.port),
            "--storage-path", str(self.path), "--sync-on-commit", "--cache-size", self.cache_size,
            "--log-level", "WARNING", *(["--auth"] if auth else []),
            *(["--enable-test-commands"] if self.test_commands else []),
        ]
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as logf:
            self.proc = Child(_dying_with_parent(cmd), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              start_new_session=True)  # Ctrl-C on `make run` reaches us; we stop the store in order
        await self._wait_ready(wait_s)

    async def _wait_ready(self, wait_s: float) -> None:
        client: AsyncMongoClient = AsyncMongoClient(self.url, serverSelectionTimeoutMS=300)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        try:
            while True:
                assert self.proc is not None
                if self.proc.returncode is not None:
                    raise RuntimeError(f"embedded store exited with {self.proc.returncode}; see {self.log_path}:\n"
                                       + self.log_tail())
                try:
                    await client.admin.command("ping")
                    return
                except Exception:
                    if loop.time() > deadline:
                        msg = f"embedded store did not answer within {wait_s}s; see {self.log_path}"
                        raise RuntimeError(msg) from None
                    await asyncio.sleep(0.1)
        finally:
            await client.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def _supervise(self) -> None:
        backoff = 0.5
        while not self._stopping:
            assert self.proc is not None
            code = await self.proc.wait()
            if self._stopping:
                return
            hung = self.proc.terminated  # (outside a stop, only the watchdog sends SIGTERM)
            child(EMBEDDED_STORE_RESTARTS, self.name, "hung" if hung else "exited").inc()
            if hung:
                log.warning("embedded store stopped by the watchdog (code %s); restarting in %.1fs", code, backoff)
            else:
                self.crashes += 1
                log.error("embedded store exited unexpectedly (code %s, crash #%d); restarting in %.1fs. Log tail:\n%s",
                          code, self.crashes, backoff, self.log_tail())
            await asyncio.sleep(backoff)
            try:
                await self._spawn(wait_s=30)
                log.warning("embedded store restarted on 127.0.0.1:%d", self.port)
                backoff = 0.5
            except Exception as exc:
                log.error("embedded store restart failed: %s", exc)
                backoff = min(backoff * 2, 30)

    def _watch(self, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        """Stop the store process when it runs but no longer answers; the supervisor then restarts it. Judged
        only once the process has answered (a store still recovering its journal at start is not wedged). The
        probe reads a collection's catalogue entry, as every command does, so it needs the storage engine, not
        only the connection thread that a ``ping`` would. A thread of its own, with a blocking client: its clock
        is the wall's, where one on the event loop counted the loop's own holdups as the store's silence (in the
        tests, a loop left waiting through a synchronous test's two minutes read as a store silent that long)."""
        client: MongoClient = MongoClient(self.url, timeoutMS=self.hang_s * 1000, maxPoolSize=1,
                                          appName="healthmate-watchdog")
        answered: Child | None = None
        last_answer = time.monotonic()
        try:
            while not stop.wait(WATCH_EVERY_S):
                proc = self.proc
                if self._unwatched:  # (silence counts from the end of the step)
                    last_answer = time.monotonic()
                    continue
                try:
                    client.admin.command("find", "healthmate_watchdog", limit=1)
                    answered, last_answer = proc, time.monotonic()
                except Exception as exc:
                    silent_s = time.monotonic() - last_answer
                    if proc is None or proc is not answered or proc is not self.proc or proc.popen.poll() is not None \
                            or silent_s < self.hang_s or stop.is_set() or self._unwatched:
                        continue
                    self.hangs += 1
                    log.error("embedded store (pid %d) has not answered for %.0f s (%s); stopping it to restart it "
                              "(hang #%d); its threads' stacks follow in %s", proc.pid, silent_s, exc, self.hangs,
                              self.log_path)
                    try:
                        asyncio.run_coroutine_threadsafe(self._terminate(proc, TERM_GRACE_S), loop).result()
                    except RuntimeError:  # the loop has closed: nothing left to restart it
                        return
        finally:
            client.close()

    @contextlib.contextmanager
    def unwatched(self) -> Iterator[None]:
        """A step that may keep the store from answering for longer than ``hang_s`` without it being wedged: the
        start-up's index builds and migrations on a large data dir (SecantusDB's drop of a database holding 50,000
        readings kept it silent for over 15 s here). The watchdog does not judge the store meanwhile."""
        self._unwatched += 1
        try:
            yield
        finally:
            self._unwatched -= 1

    async def stop(self) -> None:
        self._stopping = True
        self._watch_stop.set()  # (a read under way ends within hang_s; the thread is a daemon's, and judges no more)
        await cancel_and_wait(self._supervisor)
        await self._terminate()

    async def _terminate(self, proc: Child | None = None, grace_s: float = 15.0) -> None:
        """SIGTERM (once, ``Child.terminate``), SIGKILL if it has not exited ``grace_s`` later."""
        proc = proc or self.proc
        if proc and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                log.error("embedded store did not stop on SIGTERM; killing it")
                proc.kill()
                await proc.wait()


async def start_embedded(stores: list[EmbeddedStore]) -> list[str]:
    """The stores started side by side (start-up waits for the slower one, not for both in turn); their URLs."""
    urls = await asyncio.gather(*(s.start() for s in stores), return_exceptions=True)
    if error := next((u for u in urls if isinstance(u, BaseException)), None):
        raise error
    log.info("data lives in %s", stores[0].data_dir)
    return [str(u) for u in urls]
