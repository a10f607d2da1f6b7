"""Hostile input, generated: arbitrary payloads at every Socket.IO event (hypothesis) and at every
REST route of docs/openapi.yaml (schemathesis). No handler crashes, every refusal is the uniform
error, and a refusal changes no stored state (the append-only audit of the refusal aside).

Both run against a real server process on its own embedded store; the number of examples is bounded
(HEALTHMATE_FUZZ_EXAMPLES, default 12 per event or route) so CI stays fast."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import socketio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import MongoClient

from server.infra.embedded_store import USER, free_port
from tests.helpers import PASSWORD

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("HEALTHMATE_FUZZ_EXAMPLES", "12"))
IGNORED = {"audit"}  # refusals are audited by design
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))


class Live:
    """A server process with users, a link and a paired device to fuzz as."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HEALTHMATE_PORT": str(self.port), "HEALTHMATE_HOST": "127.0.0.1",
               "HEALTHMATE_DATA_DIR": str(tmp), "HEALTHMATE_MONGODB_URL": "", "HEALTHMATE_REDIS_URL": "",
               "HEALTHMATE_JWT_SECRET": "", "HEALTHMATE_EVENT_BURST": "100000", "HEALTHMATE_USER_EVENT_BURST": "100000",
               "HEALTHMATE_LOGIN_MAX_FAILURES_PER_IP": "100000", "HEALTHMATE_LOGIN_MAX_FAILURES_PER_ACCOUNT": "100000",
               # no device marked silent, no alert (alert:help raises one) escalated or its device watch (push_watches)
               # fired mid-run: time passing is not a refusal changing the store
               "HEALTHMATE_DEVICE_SILENCE_S": "86400", "HEALTHMATE_ALERT_ESCALATION_S": "3600",
               "HEALTHMATE_ALERT_PUSH_AFTER_S": "600"}
        self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        threading.Thread(target=lambda: self.output.extend(self.proc.stdout), daemon=True).start()  # type: ignore[arg-type]
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, "".join(self.output)
            time.sleep(0.2)
        # The embedded store and the bulk collections' store (<data dir>/bulk), each with --auth
        started = r"embedded store \(SecantusDB\) on 127.0.0.1:(\d+), data in (\S+)/db,"
        stores = re.findall(started, "".join(self.output))
        assert len(stores) == 2, "".join(self.output)
        self.dbs = [MongoClient(f"mongodb://{USER}:{(Path(folder) / 'store_credential').read_text().strip()}"
                                f"@127.0.0.1:{port}/?directConnection=true&authSource=admin")["healthmate"]
                    for port, folder in stores]
        self.patient = self._register("patient")
        self.carer = self._register("caregiver")
        code = self._post("/api/links/codes", self.patient, None)["code"]
        self._post("/api/links/redeem", self.carer, {"code": code})
        self.device = self._post(f"/api/patients/{self.patient['user']['id']}/devices", self.patient,
                                 {"kind": "ecg", "serial": "FUZZ-1", "model": "Fuzz"})

    def _post(self, path: str, who: dict[str, Any] | None, body: Any) -> Any:
        headers = {"Authorization": f"Bearer {who['access_token']}"} if who else {}
        resp = requests.post(self.url + path, json=body, headers=headers, timeout=10)
        assert resp.status_code in (200, 201), resp.text
        return resp.json()

    def _register(self, role: str) -> dict[str, Any]:
        return self._post("/api/auth/register", None, {"email": f"{role}@fuzz.example.org", "password": PASSWORD,
                                                        "name": role.title(), "role": role})

    def fingerprint(self) -> dict[str, Any]:
        """What is stored (in both stores): every collection's documents but the audit's, each with when it expires
        (if it does)."""
        return {f"{db.client.address}/{name}": sorted(((d.get("expires_at"), repr(d))
                                                       for d in db[name].find({}, {"last_used_at": 0})),
                                                      key=lambda e: e[1])
                for db in self.dbs for name in sorted(db.list_collection_names()) if name not in IGNORED}

    def changed_since(self, before: dict[str, Any]) -> list[str]:
        """The collections whose documents differ from ``before`` (a fingerprint), leaving out on both sides the
        documents expired by now: the store deletes those (TTL) whenever its sweep comes, request or not."""
        after, now = self.fingerprint(), datetime.now(UTC).replace(tzinfo=None)

        def live(entries: list[tuple[Any, str]] | None) -> list[str]:
            return [r for at, r in entries or [] if not isinstance(at, datetime) or at.replace(tzinfo=None) > now]

        return sorted(name for name in set(after) | set(before) if live(after.get(name)) != live(before.get(name)))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    server = Live(tmp_path_factory.mktemp("fuzz"))
    yield server
    server.stop()


def assert_uniform(error: Any) -> None:
    assert isinstance(error, dict) and set(error) == {"error"}, error
    assert set(error["error"]) == {"code", "message", "details"}, error
    assert isinstance(error["error"]["code"], str) and error["error"]["code"] != "internal", error


# --- Socket.IO ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20)


def payloads(live: Live) -> st.SearchStrategy[Any]:
    ids = st.sampled_from([live.patient["user"]["id"], live.carer["user"]["id"], live.device["device"]["id"],
                           "0" * 24, "not-an-id", ""])
    keys = st.sampled_from(["patient_id", "stream_id", "id", "code", "kind", "seq", "samples", "t0", "link_id",
                            "sampling_rate", "before", "limit", "all", "callee", "media", "systolic", "diastolic"])
    shaped = st.dictionaries(keys, json_values | ids, max_size=6)
    return json_values | shaped | st.binary(max_size=64)


def _events(live: Live) -> list[str]:
    doc = __import__("yaml").safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    return sorted(name for name, op in doc["operations"].items() if op["action"] == "receive")


def _fuzz_event(live: Live, clients: dict[str, socketio.SimpleClient], event: str, counts: dict[str, int]) -> None:
    @FUZZ_SETTINGS
    @given(payload=payloads(live), who=st.sampled_from(sorted(clients)))
    def fuzz(payload: Any, who: str) -> None:
        before = live.fingerprint()
        reply = clients[who].call(event, payload, timeout=15)
        assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), (event, reply)
        if reply["ok"]:
            counts["ok"] += 1
            return
        counts["refused"] += 1
        assert_uniform({"error": reply["error"]})
        assert set(reply) == {"ok", "error"}, reply
        assert not live.changed_since(before), (event, who, payload, reply)

    fuzz()


def test_every_event_survives_arbitrary_payloads(live: Live) -> None:
    clients = {}
    for name, auth in (("patient", {"token": live.patient["access_token"]}),
                       ("caregiver", {"token": live.carer["access_token"]}),
                       ("device", {"device_token": live.device["credential"]})):
        client = socketio.SimpleClient()
        client.connect(live.url, auth=auth, transports=["websocket"])
        clients[name] = client
    events = _events(live)
    assert len(events) >= 10
    counts = {"ok": 0, "refused": 0}
    try:
        for event in events:
            _fuzz_event(live, clients, event, counts)
        for who, client in clients.items():  # every connection survived everything
            reply = client.call("notifications:unread-count", None, timeout=10)
            assert reply["ok"] is (who != "device"), reply
    finally:
        for client in clients.values():
            client.disconnect()
    assert counts["refused"] > counts["ok"] > 0, counts
    assert live.proc.poll() is None and "Traceback" not in "".join(live.output)


def test_every_field_of_every_update_survives_arbitrary_values(live: Live) -> None:
    """Updates of things that exist, which random payloads rarely reach: each field set to any JSON value
    (null included) is applied or refused uniformly with nothing stored, and everything still reads."""
    from server.care.documents import ContactUpdate, ProfilePatch
    from server.meds.documents import MedUpdate
    from server.vitals.documents import BPUpdate
    from tests.test_contacts import DOCTOR
    from tests.test_medications import MED

    pid = live.patient["user"]["id"]
    client = socketio.SimpleClient()
    client.connect(live.url, auth={"token": live.patient["access_token"]}, transports=["websocket"])

    def ok(event: str, data: Any) -> Any:
        reply = client.call(event, data, timeout=15)
        assert reply["ok"] is True, (event, reply)
        return reply["data"]

    reading = ok("bp:add", {"systolic": 120, "diastolic": 80, "measured_at": "2026-11-20T08:00:00Z"})
    contact = ok("contact:add", {"patient_id": pid, **DOCTOR})
    med = ok("med:create", {"patient_id": pid, **MED})
    targets = {"bp:update": (BPUpdate, {"reading_id": reading["id"]}),
               "contact:update": (ContactUpdate, {"contact_id": contact["id"]}),
               "med:update": (MedUpdate, {"patient_id": pid, "medication_id": med["id"]}),
               "PATCH /api/me": (ProfilePatch, {})}
    headers = {"Authorization": f"Bearer {live.patient['access_token']}"}

    def reads_back() -> None:
        for event in ("bp:list", "contacts:list", "med:list"):
            ok(event, {"patient_id": pid})
        assert requests.get(live.url + "/api/me", headers=headers, timeout=10).status_code == 200

    @FUZZ_SETTINGS
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(targets)))
        model, ids = targets[name]
        fields = st.sampled_from(sorted(set(model.model_fields) - set(ids)))
        change = {**data.draw(st.dictionaries(fields, json_values, min_size=1, max_size=3)), **ids}
        before = live.fingerprint()
        if name.startswith("PATCH"):
            response = requests.patch(live.url + "/api/me", json=change, headers=headers, timeout=15)
            reply = {"ok": True} if response.status_code == 200 else {"ok": False, **response.json()}
            assert response.status_code in (200, 422), (change, response.text)
        else:
            reply = client.call(name, change, timeout=15)
        if not reply["ok"]:
            assert_uniform({"error": reply["error"]})
            assert not live.changed_since(before), (name, change, reply)
        reads_back()

    try:
        fuzz()
    finally:
        client.disconnect()
    assert live.proc.poll() is None and "Traceback" not in "".join(live.output)


def test_oversized_message_is_refused_at_the_transport(live: Live) -> None:
    client = socketio.SimpleClient(reconnection=False)
    client.connect(live.url, auth={"token": live.patient["access_token"]}, transports=["websocket"])
    try:
        client.emit("patients:list", {"x": "y" * 1_200_000})
        deadline = time.monotonic() + 10
        while client.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not client.connected  # closed by the server at the 1 MB limit
    finally:
        client.disconnect()
    other = socketio.SimpleClient()
    other.connect(live.url, auth={"token": live.carer["access_token"]}, transports=["websocket"])
    assert other.call("patients:list", None, timeout=10)["ok"] is True  # the server is fine
    other.disconnect()


# --- REST --------------------------------------------------------------------------------------------

SCHEMA = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.yaml")


@SCHEMA.parametrize()
@FUZZ_SETTINGS
def test_every_route_survives_generated_requests(case: Any, live: Live) -> None:
    who = live.patient if hash(repr(case.path_parameters)) % 2 else live.carer
    headers = {"Authorization": f"Bearer {who['access_token']}"}
    if case.path_parameters and "patient_id" in case.path_parameters and hash(repr(case.query)) % 2:
        case.path_parameters["patient_id"] = live.patient["user"]["id"]
    before = live.fingerprint() if case.method.upper() != "GET" else None
    response = case.call(base_url=live.url, headers=headers, timeout=15)
    assert response.status_code < 500 or response.status_code == 503, (case.method, case.path, response.text)
    if response.status_code >= 400:
        assert_uniform(response.json())
        if before is not None and case.path not in ("/api/auth/login",):  # failed logins are counted by design
            assert not live.changed_since(before), (case.method, case.path, response.text)
