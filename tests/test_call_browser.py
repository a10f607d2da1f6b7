"""A real browser places a call: Debian's Chromium (headless, fake microphone) driven by Playwright
loads a page using the official socket.io JavaScript client (from npm), invites an aiortc peer,
trickles its ICE candidates through call:signal, and media flows both ways."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from aiohttp import web

from server.app import create_app
from server.infra.embedded_store import EmbeddedStore
from tests.call_peers import CallPeer
from tests.conftest import make_settings
from tests.helpers import Api

ROOT = Path(__file__).resolve().parent.parent
SOCKET_IO_JS = ROOT / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream", "--no-sandbox", "--headless",
                 "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><script src="/test/socket.io.min.js"></script></head>
<body><script>
window.placeCall = async (token, callee) => {
  const sock = io({auth: {token}, transports: ["websocket"]});
  await new Promise((ok, fail) => { sock.on("connect", ok); sock.on("connect_error", fail); });
  const mic = await navigator.mediaDevices.getUserMedia({audio: true});
  const pc = new RTCPeerConnection();
  window.pc = pc;
  mic.getTracks().forEach((t) => pc.addTrack(t, mic));
  const call = await sock.emitWithAck("call:invite", {callee, media: "audio"});
  if (!call.ok) throw new Error(JSON.stringify(call));
  const id = call.data.id;
  pc.onicecandidate = (e) => sock.emitWithAck("call:signal",
      {call_id: id, type: "candidate", candidate: e.candidate ? e.candidate.toJSON() : null});
  sock.on("call:peer-signal", async (m) => {
    if (m.type === "answer") await pc.setRemoteDescription({type: "answer", sdp: m.sdp});
    else if (m.type === "candidate" && m.candidate) await pc.addIceCandidate(m.candidate);
  });
  sock.on("call:accepted", async () => {
    await pc.setLocalDescription(await pc.createOffer());
    const sent = await sock.emitWithAck("call:signal", {call_id: id, type: "offer", sdp: pc.localDescription.sdp});
    if (!sent.ok) console.error(JSON.stringify(sent));
  });
  return id;
};
window.rtpStats = async () => {
  const out = {packetsReceived: 0, packetsSent: 0, state: window.pc ? window.pc.connectionState : "none"};
  if (window.pc) (await window.pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") out.packetsReceived += s.packetsReceived;
    if (s.type === "outbound-rtp" && s.kind === "audio") out.packetsSent += s.packetsSent;
  });
  return out;
};
</script></body></html>
"""


@pytest.fixture
async def browser_api(store: EmbeddedStore, tmp_path: Path, aiohttp_server):  # type: ignore[no-untyped-def]
    if not SOCKET_IO_JS.exists():
        pytest.fail("node_modules/socket.io-client is missing; `make test` runs npm install")
    app = create_app(make_settings(store.url, tmp_path))

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def no_icon(_: web.Request) -> web.Response:
        return web.Response(status=204)

    async def script(_: web.Request) -> web.FileResponse:
        return web.FileResponse(SOCKET_IO_JS, headers={"Content-Type": "application/javascript"})

    app.router.add_get("/test/call.html", page)  # served by the app itself: same origin as Socket.IO
    app.router.add_get("/test/socket.io.min.js", script)
    app.router.add_get("/favicon.ico", no_icon)  # the browser asks for one
    server = await aiohttp_server(app)
    async with Api.of(server) as client:
        yield client


async def test_browser_calls_an_aiortc_peer_and_media_flows_both_ways(browser_api: Api) -> None:
    from playwright.async_api import async_playwright

    api = browser_api
    patient, carer = await api.register("patient"), await api.register("caregiver")
    await api.link(patient, carer)
    s_patient = await api.socket(patient)
    callee = CallPeer(s_patient, 660)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page(bypass_csp=True)  # the test page scripts inline; the app does not
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            await page.goto(api.base_url + "/test/call.html")
            call_id = await page.evaluate("([t, c]) => placeCall(t, c)", [carer.access_token, patient.id])
            (incoming,) = await s_patient.events.wait("call:incoming")
            assert incoming["id"] == call_id and incoming["caller"]["id"] == carer.id
            await s_patient.ok("call:accept", {"call_id": call_id})
            await callee.answer(call_id)  # the browser's offer, then its trickled candidates
            for _ in range(200):
                stats = await page.evaluate("rtpStats()")
                if stats["packetsReceived"] > 20 and any(s.frames > 20 for s in callee.sinks):
                    break
                await asyncio.sleep(0.1)
            assert stats["state"] == "connected", (stats, errors)
            assert stats["packetsReceived"] > 20 and stats["packetsSent"] > 20, stats  # aiortc -> browser
            (sink,) = callee.sinks
            assert sink.frames > 20, (sink.frames, json.dumps(errors))  # browser's fake microphone -> aiortc
            assert not errors, errors
        finally:
            await browser.close()
            await callee.close()
