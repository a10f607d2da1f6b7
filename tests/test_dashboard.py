"""The clinician dashboard in a real browser (Debian's headless Chromium driven by Playwright) against the
real server with simulated devices streaming: sign-in, live waveforms, live analysis, token refresh and
reconnect; and the files and the overview it is built on."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aioice.ice
from aiortc import AudioStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp
from playwright.async_api import TimeoutError as PlaywrightTimeout

from server.app import SERVER, create_app
from server.care.security import TokenService
from tests.browser import HARNESS_EVAL, chromium, sign_in, streaming_ward
from tests.call_peers import CallPeer
from tests.conftest import TEST_SECRET, make_settings
from tests.helpers import Api
from tests.query_plans import QUERIES

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
HEART_RATE = 72.0


async def test_page_static_and_vendor_files(api: Api) -> None:
    status, body = await api.request("GET", "/")
    assert status == 200 and b'<script type="module" src="/static/app.js">' in body
    for path, marker in (("/static/app.js", b"live:subscribe"), ("/static/style.css", b".strip"),
                         ("/vendor/socket.io.esm.min.js", b"export"), ("/vendor/uPlot.esm.js", b"uPlot"),
                         ("/vendor/uPlot.min.css", b".uplot")):
        status, body = await api.request("GET", path)
        assert status == 200 and marker in body, path
    for path in ("/vendor/package.json", "/static/..%2Fdashboard.py", "/static/.hidden", "/static/nope.js"):
        status, err = await api.request("GET", path)
        assert status == 404 and err["error"]["code"] == "not_found", path
    status, info = await api.request("GET", "/api")
    assert status == 200 and info["service"] == "healthmate" and info["dashboard"] == "/"


async def test_overview_lists_linked_patients_with_live_status(api: Api) -> None:
    ward = await streaming_ward(api, kinds=("ecg",))
    stranger = await api.register("clinician")
    try:
        for _ in range(100):
            status, body = await api.request("GET", "/api/overview", ward.clinician)
            assert status == 200
            (item,) = body["items"]
            if item["streaming"]:
                break
            await asyncio.sleep(0.1)
        assert item["patient"]["id"] == ward.patient.id and [s["kind"] for s in item["streams"]] == ["ecg"]
        status, body = await api.request("GET", "/api/overview", stranger)
        assert status == 200 and body["items"] == []
        status, err = await api.request("GET", "/api/overview")
        assert status == 401 and err["error"]["code"] == "unauthorized"
    finally:
        await ward.close()
    status, body = await api.request("GET", "/api/overview", ward.clinician)
    assert body["items"][0]["streaming"] is False


async def test_overview_shows_the_latest_reading_not_deleted_however_old(api: Api) -> None:
    """The overview looks up the last day first, then the slices before it (BP_SLICES), and all of the patient's
    readings only when none of them has one."""
    patient, clinician = await api.register("patient"), await api.register("clinician")
    await api.link(patient, clinician)

    async def latest() -> dict | None:
        status, body = await api.request("GET", "/api/overview", clinician)
        assert status == 200
        return body["items"][0]["bp"]

    assert await latest() is None
    old = await add_bp(api, patient, 131, 84, minutes_ago=60 * 24 * 45)  # before the last of BP_SLICES
    await add_bp(api, patient, 128, 82, minutes_ago=60 * 24 * 50)
    assert (await latest())["id"] == old["id"]
    week = await add_bp(api, patient, 124, 80, minutes_ago=60 * 24 * 3)
    assert (await latest())["id"] == week["id"]
    new = await add_bp(api, patient, 119, 77, minutes_ago=60)
    with QUERIES.tap() as seen:
        assert (await latest())["id"] == new["id"]
    [window] = [q["measured_at"] for c, q in seen if c == "bp_readings"]  # the last day's, alone
    assert "$lt" not in window and datetime.now(UTC) - window["$gte"] < timedelta(days=1, minutes=1)
    for reading in (new, week):
        await (await api.socket(patient)).ok("bp:delete", {"reading_id": reading["id"]})
    assert (await latest())["id"] == old["id"]


async def add_bp(api: Api, patient, systolic: float, diastolic: float, minutes_ago: float = 0) -> dict:
    sock = await api.socket(patient)
    at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return await sock.ok("bp:add", {"systolic": systolic, "diastolic": diastolic, "pulse": 70,
                                    "measured_at": at.isoformat()})


async def _canvas_digest(page, selector: str) -> str:
    data = await page.eval_on_selector(selector, "c => c.toDataURL()")
    return hashlib.sha256(data.encode()).hexdigest()


async def test_clinician_watches_live_waveforms(api: Api) -> None:
    ward = await streaming_ward(api, heart_rate=HEART_RATE)
    for i, (sys_, dia) in enumerate([(118, 76), (127, 79), (134, 84), (142, 91), (131, 83)]):
        await add_bp(api, ward.patient, sys_, dia, minutes_ago=(5 - i) * 240)
    try:
        async with chromium() as browser:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000}, bypass_csp=HARNESS_EVAL)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await sign_in(page, api.base_url, ward.clinician)
            row = page.locator(f'.patient-row[data-id="{ward.patient.id}"]')
            await row.wait_for()
            assert "Ana Ribeiro" in await row.inner_text()
            assert "131/83" in await row.inner_text() and "Stage 1" in await row.inner_text()
            await row.click()
            await page.wait_for_function("window.__dashboard.frames >= 4", timeout=20_000)
            await page.wait_for_selector("#p-stream[data-state=on]")
            first = {s: await _canvas_digest(page, s) for s in ("#ecg", "#ppg")}
            await asyncio.sleep(0.5)
            second = {s: await _canvas_digest(page, s) for s in ("#ecg", "#ppg")}
            assert all(first[s] != second[s] for s in first), "the waveforms do not move"
            # A strip squeezed to no width (a collapsed layout) skips its grid, and draws on when it is back.
            await page.eval_on_selector("#ecg", "c => { c.style.width = '0px'; }")
            drawn = await page.evaluate("window.__dashboard.draws")
            await page.wait_for_function(f"window.__dashboard.draws > {drawn + 3}", timeout=10_000)
            await page.eval_on_selector("#ecg", "c => { c.style.width = ''; }")
            # The live analysis: shown once NeuroKit2's window has filled (a few seconds of signal).
            await page.wait_for_function(
                "Number.isFinite(parseFloat(document.querySelector('#v-hr').textContent))"
                " && Number.isFinite(parseFloat(document.querySelector('#v-pr').textContent))", timeout=30_000)
            await asyncio.sleep(2)
            hr = float(await page.text_content("#v-hr"))
            pr = float(await page.text_content("#v-pr"))
            assert abs(hr - HEART_RATE) <= 3, hr
            assert abs(pr - HEART_RATE) <= 3, pr
            # HRV is shown whenever the last analysis had enough clean intervals for it.
            await page.wait_for_function(
                "Number.isFinite(parseFloat(document.querySelector('#v-rmssd').textContent))", timeout=30_000)
            # Blood pressure: the history chart, then a new reading shown live in the tile, the chart and the list.
            await page.wait_for_selector("#bp-chart .uplot canvas")
            assert await page.evaluate("document.querySelector('#bp-chart .uplot') !== null")
            assert await page.text_content("#v-bp") == "131/83"
            await add_bp(api, ward.patient, 122, 78)
            await page.wait_for_function("document.querySelector('#v-bp').textContent === '122/78'")
            assert await page.text_content("#v-bp-cat") == "Elevated"
            assert "122/78" in await row.inner_text()
            assert await page.evaluate("window.__dashboard.bpPoints") == 6
            # A crisis reading raises an alert: shown at once (banner, panel, list badge), acknowledged from the page.
            crisis = await add_bp(api, ward.patient, 192, 124)
            item = page.locator("#alerts li.alert-item.status-open")
            await item.wait_for(timeout=10_000)
            text = (await item.inner_text()).lower()
            assert "hypertensive crisis" in text and "192/124" in text
            assert await page.is_visible("#alert-banner")
            await row.locator(".badge").wait_for()
            assert await row.locator(".badge").inner_text() == "1"
            await item.locator("button").click()
            await page.locator("#alerts li.status-acknowledged").wait_for(timeout=10_000)
            assert "Dr. Sofia Costa is handling it" in await page.inner_text("#alerts")
            await page.wait_for_selector("#alert-banner", state="hidden")
            status, alerts = await api.request("GET", f"/api/patients/{ward.patient.id}/alerts", ward.clinician)
            assert status == 200
            (alert,) = alerts["items"]
            assert alert["status"] == "acknowledged" and alert["acknowledged_by"]["user_id"] == ward.clinician.id
            assert alert["data"]["reading_id"] == crisis["id"]
            status, story = await api.request("GET", f"/api/alerts/{alert['id']}", ward.clinician)
            assert any(d["user_id"] == ward.clinician.id for d in story["deliveries"]), "receipt not confirmed"
            await row.locator(".badge").wait_for(state="detached", timeout=15_000)
            ARTIFACTS.mkdir(exist_ok=True)
            # A picture for people (not a check): on a loaded machine the always-animating page can keep
            # Chromium from producing a frame for the screenshot in time.
            with contextlib.suppress(PlaywrightTimeout):
                await page.screenshot(path=str(ARTIFACTS / "dashboard-patient.png"), full_page=True, timeout=10_000)
            draws = await page.evaluate("window.__dashboard.draws")
            assert draws > 30
            assert errors == []
    finally:
        await ward.close()


async def test_no_pulse_shows_a_dash_and_the_reason_never_a_number(api: Api) -> None:
    """The simulator's sensor_off scenario (a flat 0 from 10 s of streaming): the pulse-rate tile and the
    patient's row go from a number to "—" and "no signal", and back to a number once the sensor is on."""
    ward = await streaming_ward(api, kinds=("ppg",), scenario="sensor_off")
    try:
        async with chromium() as browser:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000}, bypass_csp=HARNESS_EVAL)
            await sign_in(page, api.base_url, ward.clinician)
            row = page.locator(f'.patient-row[data-id="{ward.patient.id}"]')
            await row.click()
            await page.wait_for_function(
                "Number.isFinite(parseFloat(document.querySelector('#v-pr').textContent))", timeout=30_000)
            await page.wait_for_function("document.querySelector('#v-pr').textContent === '—'", timeout=30_000)
            unit = await page.evaluate("document.querySelector('#v-pr').nextElementSibling.textContent")
            assert unit == "no signal"
            assert "♥ — no signal" in await row.inner_text()
    finally:
        await ward.close()


async def test_expired_token_refreshed_and_socket_reconnects_without_reload(api: Api) -> None:
    ward = await streaming_ward(api, kinds=("ecg",))
    expired, _ = TokenService(TEST_SECRET, api.app[SERVER].settings.jwt_issuer, -60, 3600).issue(  # type: ignore[index]
        "access", ward.clinician.id, "000000000000000000000000", role="clinician")
    try:
        async with chromium() as browser:
            page = await browser.new_page(bypass_csp=HARNESS_EVAL)
            await sign_in(page, api.base_url, ward.clinician)
            await page.click(f'.patient-row[data-id="{ward.patient.id}"]')
            await page.wait_for_function("window.__dashboard.frames >= 2", timeout=20_000)
            # The access token in hand expires (the page believes it still valid) and the server drops the socket.
            await page.evaluate("""t => { const s = window.__dashboard.session.state;
                                          s.access_token = t; s.expires_at = s.refresh_at = Date.now() + 600000; }""",
                                expired)
            realtime = api.app[SERVER].realtime  # type: ignore[index]
            for sid, principal in list(realtime.principals.items()):
                if principal.user_id == ward.clinician.id or str(principal.user_id) == ward.clinician.id:
                    await realtime.sio.disconnect(sid)
            await page.wait_for_function("window.__dashboard.session.state.access_token !== " + repr(expired),
                                         timeout=15_000)
            frames = await page.evaluate("window.__dashboard.frames")
            await page.wait_for_function(f"window.__dashboard.frames > {frames + 1}", timeout=15_000)
            assert await page.text_content("#conn") == "Live"
            assert await page.evaluate("location.hash") == f"#patient={ward.patient.id}"
            # Signing out ends the session on the server and leaves nothing of it in the page.
            token = await page.evaluate("window.__dashboard.session.state.access_token")
            await page.click("#logout")
            await page.wait_for_selector("#login-view:not([hidden])")
            assert await page.evaluate("sessionStorage.length") == 0
            assert [c for c in await page.context.cookies() if c["name"] == "hm_refresh"] == []
            assert await page.locator(".patient-row").count() == 0
            status, err = await api.request("GET", "/api/me", headers={"Authorization": f"Bearer {token}"})
            assert status == 401 and err["error"]["code"] == "session_revoked"
    finally:
        await ward.close()


class PatientPhone:
    """The patient's side of a call: an aiortc peer that answers on the patient's socket with a tone,
    counts the audio frames it receives, and uses loopback candidates only."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.pc = RTCPeerConnection()
        self.frames = 0
        self.pc.on("track", lambda track: asyncio.ensure_future(self._count(track)))

    async def _count(self, track) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.frames += 1

    async def answer(self) -> str:
        (call,) = await self.sock.events.wait("call:incoming", timeout=15)
        await self.sock.ok("call:accept", {"call_id": call["id"]})
        offer = await self._next("offer")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        self.pc.addTrack(AudioStreamTrack())
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        answer = self.pc.localDescription.sdp
        await self.sock.ok("call:signal", {"call_id": call["id"], "type": "answer", "sdp": answer})
        return call["id"]

    async def _next(self, kind: str) -> dict:
        while True:
            for msg in self.sock.events.of("call:peer-signal"):
                if msg["type"] == kind:
                    return msg
            await asyncio.sleep(0.05)

    async def take_candidates(self) -> None:
        """The browser's trickled candidates, loopback ones only (this test sends nothing off the machine)."""
        seen = 0
        while True:
            signals = [m for m in self.sock.events.of("call:peer-signal") if m["type"] == "candidate"]
            for msg in signals[seen:]:
                c = msg.get("candidate")
                if c and " 127.0.0.1 " in c["candidate"]:
                    ice = candidate_from_sdp(c["candidate"].split(":", 1)[1])
                    ice.sdpMid, ice.sdpMLineIndex = c.get("sdpMid"), c.get("sdpMLineIndex")
                    await self.pc.addIceCandidate(ice)
            seen = len(signals)
            await asyncio.sleep(0.05)


# A fake microphone, no permission prompt, and loopback candidates (the peers are on this machine).
CALL_FLAGS = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
              "--allow-loopback-in-peer-connection")


async def patient_page(browser, api: Api, clinician, patient):  # type: ignore[no-untyped-def]
    """The dashboard signed in as ``clinician``, showing ``patient``, connected live."""
    page = await browser.new_page(bypass_csp=HARNESS_EVAL)
    await sign_in(page, api.base_url, clinician)
    await page.click(f'.patient-row[data-id="{patient.id}"]')
    await page.wait_for_selector("#conn[data-state=connected]")
    return page


async def test_clinician_calls_the_patient_from_the_page(api: Api, monkeypatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    patient = await api.register("patient", name="Ana Ribeiro")
    clinician = await api.register("clinician")
    await api.link(patient, clinician)
    phone = PatientPhone(await api.socket(patient))
    trickle = None
    try:
        async with chromium(CALL_FLAGS) as browser:
            page = await patient_page(browser, api, clinician, patient)
            await page.click("#call-btn")
            call_id = await phone.answer()
            trickle = asyncio.create_task(phone.take_candidates())
            await page.wait_for_selector("#call-status[data-state=connected]", timeout=20_000)
            await page.wait_for_function(
                "window.__dashboard.call.packets().then(p => p.received > 20 && p.sent > 20)", timeout=15_000)
            for _ in range(100):
                if phone.frames > 20:
                    break
                await asyncio.sleep(0.1)
            assert phone.frames > 20, "no audio from the browser reached the patient"
            await page.click("#hangup-btn")
            ended = await phone.sock.events.wait("call:ended", timeout=10)
            assert ended[0]["call_id"] == call_id and ended[0]["reason"] == "hangup"
            await page.wait_for_selector("#call-btn:not([hidden])")
    finally:
        if trickle is not None:
            trickle.cancel()
        await phone.pc.close()


BROWSER_TRACKS_HEARD = """async () => {
  let tracks = 0;
  (await window.__dashboard.call.pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio" && s.packetsReceived > 20) tracks++;
  });
  return tracks;
}"""


async def test_clinician_joins_the_patients_ongoing_call_from_the_page(api: Api, monkeypatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    patient, carer, clinician = [await api.register(r) for r in ("patient", "caregiver", "clinician")]
    await api.link(patient, carer)
    await api.link(patient, clinician)
    s_carer, s_patient = await api.socket(carer), await api.socket(patient)
    caller, callee = CallPeer(s_carer, 440), CallPeer(s_patient, 660)
    try:
        async with chromium(CALL_FLAGS) as browser:
            page = await patient_page(browser, api, clinician, patient)
            assert await page.locator("#join-btn").is_hidden()  # no call in progress

            # The caregiver calls the patient; the page learns of it (patient:call) and offers to join.
            call = await s_carer.ok("call:invite", {"callee": patient.id, "media": "audio"})
            await s_patient.events.wait("call:incoming")
            await s_patient.ok("call:accept", {"call_id": call["id"]})
            await asyncio.gather(caller.offer(call["id"]), callee.answer(call["id"]))
            await page.wait_for_selector("#join-btn:not([hidden])", timeout=10_000)
            assert await page.locator("#call-btn").is_hidden()

            await page.click("#join-btn")
            for sock in (s_carer, s_patient):
                (relay,) = await sock.events.wait("call:relay", timeout=15)
                assert relay["joined"]["id"] == clinician.id
            await asyncio.gather(caller.connect_relay(call["id"], 2), callee.connect_relay(call["id"], 2))
            await page.wait_for_selector("#call-status[data-state=connected]", timeout=20_000)
            # The browser hears both members, and its microphone reaches both through the relay.
            await page.wait_for_function(f"({BROWSER_TRACKS_HEARD})().then(n => n === 2)", timeout=20_000)
            for peer in (caller, callee):
                assert len(await peer.heard(1, timeout=15)) >= 1  # the other member's tone
            room = api.app[SERVER].calls.host.rooms[call["id"]]  # type: ignore[union-attr,index]
            for _ in range(100):
                forwarded = room.stats()
                if forwarded[clinician.id][carer.id] > 20 and forwarded[clinician.id][patient.id] > 20:
                    break
                await asyncio.sleep(0.1)
            assert forwarded[clinician.id][carer.id] > 20 and forwarded[clinician.id][patient.id] > 20, forwarded

            # Leaving leaves the two talking, and the call can be joined again; when it ends, it cannot.
            assert (await page.text_content("#hangup-btn")) == "Leave call"
            await page.click("#hangup-btn")
            await page.wait_for_selector("#join-btn:not([hidden])", timeout=10_000)
            ongoing = await s_carer.ok("calls:ongoing", {"patient_id": patient.id})
            assert [(c["id"], c["state"], c["joined"]) for c in ongoing] == [(call["id"], "active", [])]
            await s_carer.ok("call:hangup", {"call_id": call["id"]})
            await page.wait_for_selector("#join-btn", state="hidden", timeout=10_000)
            await page.wait_for_selector("#call-btn:not([hidden])")
            stranger = await api.socket(await api.register("caregiver"))
            refused = await stranger.call("calls:ongoing", {"patient_id": patient.id})
            assert refused["ok"] is False and refused["error"]["code"] == "forbidden"
    finally:
        for peer in (caller, callee):
            await peer.close()


STRIP_WITH_A_GAP = """async () => {
  const { WaveStrip } = await import("/static/strip.js");
  const canvas = document.createElement("canvas");
  canvas.style.cssText = "width: 800px; height: 100px; display: block";
  document.body.replaceChildren(canvas);
  const strip = new WaveStrip(canvas, { label: "", color: "#ff0000", windowMs: 8000, delayMs: 0, capacity: 512 });
  const frame = (seq) => Float32Array.from({ length: 125 }, (_, i) => Math.sin((seq * 125 + i) / 6));
  // One-second frames at 125 Hz arriving at 1..4 s; frames 4 and 5 never come; 6 and 7 arrive at 7 and 8 s.
  for (const seq of [0, 1, 2, 3, 6, 7]) strip.push("s", seq, frame(seq), 125, (seq + 1) * 1000);
  strip.draw(8000);
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const pixels = ctx.getImageData(0, 0, width, height).data;
  const columns = [];
  for (let x = 0; x < width; x++) {
    let red = false;
    for (let y = 0; y < height && !red; y++) {
      const i = (y * width + x) * 4;
      red = pixels[i] > 180 && pixels[i + 1] < 90 && pixels[i + 2] < 90;
    }
    columns.push(red);
  }
  return { columns, capacity: strip.values.length, count: strip.count };
}"""


async def test_strip_draws_a_gap_as_a_gap_in_a_fixed_buffer(api: Api) -> None:
    async with chromium() as browser:
        page = await browser.new_page(bypass_csp=HARNESS_EVAL)
        await page.goto(api.base_url + "/")
        result = await page.evaluate(STRIP_WITH_A_GAP)
    columns = result["columns"]
    width = len(columns)
    at = lambda seconds: round(seconds / 8 * width)  # noqa: E731
    drawn = lambda a, b: sum(columns[at(a):at(b)]) / (at(b) - at(a))  # noqa: E731
    assert drawn(2.2, 3.8) > 0.95 and drawn(6.2, 7.8) > 0.95, "the signal is drawn where samples are"
    assert drawn(4.1, 5.9) == 0, "the missing seconds are left blank, not bridged by a line"
    # 750 samples went into a 512-sample ring: it keeps the newest 512 (about 4 s) and does not grow.
    assert result["capacity"] == 512 and result["count"] == 512
    assert drawn(0.1, 1.8) == 0


async def test_tokens_refreshed_before_they_expire(store, tmp_path, aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    """With 30 s access tokens the page refreshes after about 20 s, on its own, and goes on working."""
    server = await aiohttp_server(create_app(make_settings(store.url, tmp_path, access_token_ttl_s=30)))
    async with Api.of(server) as api:
        patient = await api.register("patient", name="Ana Ribeiro")
        clinician = await api.register("clinician")
        await api.link(patient, clinician)
        async with chromium() as browser:
            page = await browser.new_page(bypass_csp=HARNESS_EVAL)
            await sign_in(page, api.base_url, clinician)
            first = await page.evaluate("window.__dashboard.session.state.access_token")
            (first_refresh,) = [c["value"] for c in await page.context.cookies() if c["name"] == "hm_refresh"]
            await page.wait_for_function(f"window.__dashboard.session.state.access_token !== {first!r}",
                                         timeout=35_000)
            # The new tokens work (a reload signs in with the refresh cookie); the old refresh token was rotated.
            await page.reload()
            await page.locator(f'.patient-row[data-id="{patient.id}"]').wait_for()
            await page.wait_for_selector("#conn[data-state=connected]")
            status, err = await api.request("POST", "/api/auth/refresh", json={"refresh_token": first_refresh})
            assert status == 401 and err["error"]["code"] == "refresh_token_reused"
