"""The rush bench's load generators (``bench.rush``): each a process with its share of the patients' phones,
caregivers' phones, medicine boxes and ECG devices, driven by the measuring process over a pipe."""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp

from bench._sio import SioClient

DRAIN_S = 2.0
CRISIS = {"systolic": 192, "diastolic": 124, "pulse": 101}
FRAME = struct.pack("<250f", *(0.5 * ((i % 50) < 3) for i in range(250)))  # a spike a fifth of a second


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def loader_main(conn: Any) -> None:
    asyncio.run(Loader(conn).serve())


class Loader:
    """A share of the patients: their phones, caregivers' phones and ECG devices."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.people: list[dict[str, Any]] = []
        self.doses: dict[str, float] = {}  # dose id -> when dose:due arrived
        self.noted: set[str] = set()  # dose ids whose reminder notification arrived (sent once it is stored)
        self.arrivals: dict[str, asyncio.Future[float]] = {}  # reading id -> when its alert:new arrived
        self.acking: dict[str, asyncio.Task[Any]] = {}  # patient id -> their caregiver acknowledging their last alert
        self.crises: dict[str, asyncio.Lock] = {}  # patient id -> held by the crisis reading under way
        self.frames = 0
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        while True:
            cmd, *args = await loop.run_in_executor(None, self.conn.recv)
            try:
                reply = await getattr(self, cmd)(*args)
            except Exception as exc:
                reply = RuntimeError(f"{cmd}: {exc!r}"[:300])
            self.conn.send(reply)
            if cmd == "stop":
                return

    async def add(self, url: str, rows: list[dict[str, Any]]) -> int:
        sem = asyncio.Semaphore(16)

        async def one(row: dict[str, Any]) -> dict[str, Any]:
            async with sem:
                phone, carer = SioClient(self.http), SioClient(self.http)
                phone.on("dose:due", lambda d: self.doses.setdefault(d["id"], time.time()))
                phone.on("notification:new", self._note)
                carer.on("alert:new", lambda a, c=carer: self._alert(c, a))
                carer.on("live:frame", self._frame)
                await phone.connect(url, {"token": row["patient_token"], "device_id": "phone"})
                await carer.connect(url, {"token": row["carer_token"], "device_id": "carer-phone"})
                box = SioClient(self.http)  # acknowledges each box command, as a box does
                box.on("box:command", lambda _: None)
                await box.connect(url, {"device_token": row["box_credential"]})
                person = {**row, "phone": phone, "carer": carer, "box": box, "device": None}
                if row["ecg"]:
                    reply = await carer.call("live:subscribe", {"patient_id": row["patient_id"], "display_rate": 250})
                    assert reply.get("ok"), reply
                    device = SioClient(self.http)
                    await device.connect(url, {"device_token": row["ecg_credential"]})
                    person["device"] = device
                return person

        self.people += await asyncio.gather(*(one(r) for r in rows))
        return len(rows)

    def _note(self, note: dict[str, Any]) -> None:
        if note.get("kind") == "reminder":
            self.noted.add(note["data"]["dose_id"])

    async def reminded(self) -> int:
        """How many of this step's reminder notifications have arrived."""
        return len(self.noted)

    def _arrival(self, reading_id: str) -> asyncio.Future[float]:
        if (arrival := self.arrivals.get(reading_id)) is None:
            arrival = self.arrivals[reading_id] = asyncio.get_running_loop().create_future()
        return arrival

    def _alert(self, carer: SioClient, alert: dict[str, Any]) -> None:
        """Timed against the reading that raised it (it may come before that reading's ack), then acknowledged."""
        arrival = self._arrival(str((alert.get("data") or {}).get("reading_id")))
        if not arrival.done():
            arrival.set_result(time.time())
        self.acking[alert["patient"]["id"]] = self.spawn(self._acknowledge(carer, alert["id"]))

    @staticmethod
    async def _acknowledge(carer: SioClient, alert_id: str) -> None:
        await carer.call("alert:received", {"alert_id": alert_id}, timeout=30)
        await carer.call("alert:ack", {"alert_id": alert_id}, timeout=30)

    def _frame(self, data: Any) -> None:
        self.frames += 1

    async def _reading(self, person: dict[str, Any], out: dict[str, Any], key: str = "alert_e2e") -> None:
        if not person["crisis"]:
            await self._send(person, {"systolic": random.randint(105, 150), "diastolic": 75, "pulse": 70}, out)
            return
        # A patient's crisis readings one at a time, each once the alert of the last has come and been
        # acknowledged: while an alert is open another crisis reading raises none (no alert storm), and it would
        # be timed against nothing. (Waiting only for an acknowledgement already under way let a probe sent
        # while the last alert was still on its way find that alert open, whenever alerts took longer than the
        # probes' spacing, and count an alert that never came.)
        async with self.crises.setdefault(person["patient_id"], asyncio.Lock()):
            reading_id, t0 = await self._send(person, CRISIS, out)
            if reading_id is None:
                return
            arrival = self._arrival(reading_id)
            try:
                at: float | None = await asyncio.wait_for(arrival, 15)
            except TimeoutError:
                at = None
            finally:
                self.arrivals.pop(reading_id, None)
            out[key].append(None if at is None else (at - t0) * 1000)
            if (acking := self.acking.get(person["patient_id"])) is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(acking), 30)

    async def _send(self, person: dict[str, Any], values: dict[str, int],
                    out: dict[str, Any]) -> tuple[str | None, float]:
        """One reading from the patient's phone: its id once acknowledged (None if refused), and when it was sent."""
        t0 = time.time()
        out["bp_sent"] += 1
        try:
            reply = await person["phone"].call("bp:add", {**values, "measured_at": now_iso()}, timeout=30)
        except Exception:
            reply = {}
        if not reply.get("ok"):
            out["bp_errors"] += 1
            return None, t0
        out["bp_acks"].append((time.time() - t0) * 1000)
        return reply["data"]["id"], t0

    async def _stream(self, person: dict[str, Any], until: float, out: dict[str, Any]) -> None:
        device = person["device"]
        reply = await device.call("stream:open", {"kind": "ecg", "sampling_rate": 250, "units": "mV"}, timeout=30)
        assert reply.get("ok"), reply
        sid, k = reply["data"]["stream_id"], 0
        start = time.time() + random.random()
        while start + k < until:
            await asyncio.sleep(max(0.0, start + k - time.time()))
            await device.emit("stream:frame", {"stream_id": sid, "seq": k, "t0": round(time.time() * 1000 - 1000, 3),
                                               "dtype": "float32", "samples": FRAME})
            out["frames_sent"] += 1
            k += 1
        self.spawn(device.call("stream:close", {"stream_id": sid}, timeout=30))

    async def _call(self, person: dict[str, Any], out: dict[str, Any]) -> None:
        carer, phone = person["carer"], person["phone"]
        incoming: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        phone.on("call:incoming", lambda c: incoming.done() or incoming.set_result(c))
        try:
            t0 = time.time()
            invite = await carer.call("call:invite", {"callee": person["patient_id"]}, timeout=30)
            assert invite.get("ok"), invite
            call = await asyncio.wait_for(incoming, 30)
            accept = await phone.call("call:accept", {"call_id": call["id"]}, timeout=30)
            assert accept.get("ok"), accept
            out["call_setup"].append((time.time() - t0) * 1000)
            await carer.call("call:hangup", {"call_id": call["id"]}, timeout=30)
        except Exception:
            out["calls_failed"] += 1

    async def rush(self, count: int, due_s: float, window_s: float, probes: list[float]) -> dict[str, Any]:
        """The first ``count`` patients play the window from ``due_s``; the figures once it has drained. This share's
        first patient in crisis also sends probes: a crisis reading at each of ``probes`` seconds after due time, in
        the burst of the doses' work (``alert_burst``), and their own reading in the window's second half."""
        people = self.people[:count]
        out: dict[str, Any] = {"bp_sent": 0, "bp_errors": 0, "bp_acks": [], "alert_e2e": [], "frames_sent": 0,
                               "call_setup": [], "calls_failed": 0, "alert_burst": []}
        prober = next((p for p in people if p["crisis"]), None)
        self.doses.clear()
        self.noted.clear()
        frames_before = self.frames
        await asyncio.sleep(max(0.0, due_s - time.time()))

        async def later(at: float, coro: Any) -> None:
            await asyncio.sleep(max(0.0, at - time.time()))
            await coro

        jobs = [later(due_s + (1 + random.random() if p is prober else 2 * random.random()) * window_s / 2,
                      self._reading(p, out)) for p in people]
        if prober is not None:
            jobs += [later(due_s + at, self._reading(prober, out, "alert_burst")) for at in probes]
        jobs += [self._stream(p, due_s + window_s, out) for p in people if p["ecg"]]
        jobs += [later(due_s + random.random() * window_s, self._call(p, out)) for p in people if p["calls"]]
        lags: list[float] = []
        probe = asyncio.create_task(self._lag(lags))
        await asyncio.gather(*jobs)
        await asyncio.sleep(max(0.0, due_s + window_s + DRAIN_S - time.time()))
        probe.cancel()
        return {**out, "frames_received": self.frames - frames_before, "doses": dict(self.doses), "lags": lags}

    @staticmethod
    async def _lag(lags: list[float]) -> None:
        """This loader's own event-loop lag (ms late on a 10 ms sleep): what the clients' side adds to the
        timings, which a phone with only its own sockets would not."""
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append((time.perf_counter() - t - 0.01) * 1000)

    async def idle_alerts(self, count: int) -> list[float | None]:
        """``count`` crisis readings one after another (the first crisis patient); each one's e2e ms."""
        if not count:
            return []
        person = next(p for p in self.people if p["crisis"])
        out: dict[str, Any] = {"bp_sent": 0, "bp_errors": 0, "bp_acks": [], "alert_e2e": []}
        for _ in range(count):
            await self._reading(person, out)
            await asyncio.sleep(0.2)  # spaced (the next one waits for its acknowledgement anyway)
        return out["alert_e2e"]

    @staticmethod
    async def _hang_up(people: list[dict[str, Any]]) -> None:
        socks = [s for p in people for s in (p["phone"], p["carer"], p["box"], p["device"]) if s is not None]
        await asyncio.gather(*(s.disconnect() for s in socks), return_exceptions=True)

    async def trim(self, count: int) -> int:
        """Only the first ``count`` patients stay connected (the best step played again with its own patients, not
        those of the larger steps after it)."""
        gone, self.people = self.people[count:], self.people[:count]
        await self._hang_up(gone)
        return len(gone)

    async def disconnect(self) -> None:
        await self._hang_up(self.people)
        self.people = []

    async def stop(self, *_: Any) -> None:
        await self.disconnect()
        await self.http.close()
