"""The patients' and caregivers' app (``/app/``) in Debian's Chromium, phone-sized (360 px, touch), two
browser contexts against the real server with a simulated ECG sensor: one end-to-end story, each step
checked as a person would see it, axe-core on every screen, the service worker serving the shell offline,
Web Push registration reaching the server, and a tapped notification opening its screen. Its files,
``alert:help`` and the VAPID key route without a browser first.

``HEALTHMATE_APP_SCREENSHOTS=docs/app`` (``make app-screenshots``) saves each screen as a PNG there."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from beanie import PydanticObjectId
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from playwright.async_api import BrowserContext, Page

from devices.simulators.sensor import DeviceRun, stream
from server.alerts.documents import Notification, PushToken
from server.alerts.push import message_of
from server.app import SERVER, create_app
from server.core.documents import utcnow
from server.infra.embedded_store import EmbeddedStore
from tests.browser import chromium
from tests.conftest import make_settings
from tests.helpers import PASSWORD, Api, User
from tests.test_medications import create as create_med
from tests.test_scheduler import add_dose

ROOT = Path(__file__).resolve().parent.parent
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = os.environ.get("HEALTHMATE_APP_SCREENSHOTS")
PHONE: dict[str, Any] = {"viewport": {"width": 360, "height": 740}, "device_scale_factor": 2, "is_mobile": True,
                         "has_touch": True}
FAKE_MEDIA = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
              "--autoplay-policy=no-user-gesture-required")
PUSH_ORIGIN = "https://push.example.test"  # the operator's trusted push service: never contacted here
WAIT_S = 30.0
SENT_VIDEO = "__app.call.pc.getSenders().find((s) => s.track && s.track.kind === 'video').track.enabled"
HEART_RATE = "((v) => Number.isFinite(v) && v)(parseFloat(document.querySelector('#pv-hr').textContent))"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


VAPID = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def app_api(store: EmbeddedStore, tmp_path: Path, aiohttp_server: Any) -> AsyncIterator[Api]:
    pem = VAPID.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode()
    settings = make_settings(store.url, tmp_path, vapid_private_key=pem, vapid_subject="mailto:ops@healthmate.example",
                             webpush_trusted_origins=[PUSH_ORIGIN], call_grace_s=30)
    server = await aiohttp_server(create_app(settings))
    async with Api.of(server) as client:
        yield client


# --- without a browser --------------------------------------------------------------------------------


async def test_app_files_manifest_and_worker_cache_list(app_api: Api) -> None:
    api = app_api
    async with api.http.get(api.base_url + "/app", allow_redirects=False) as resp:
        assert resp.status == 308 and resp.headers["Location"] == "/app/"
    status, page = await api.request("GET", "/app/")
    assert status == 200 and b'<script type="module" src="/app/main.js">' in page
    assert b'rel="manifest" href="/app/manifest.webmanifest"' in page
    async with api.http.get(api.base_url + "/app/manifest.webmanifest") as resp:
        assert resp.headers["Content-Type"] == "application/manifest+json"
        manifest = json.loads(await resp.read())
    assert manifest["start_url"] == manifest["scope"] == "/app/" and manifest["display"] == "standalone"
    assert {"192x192", "512x512"} <= {i["sizes"] for i in manifest["icons"]}
    for icon in manifest["icons"]:
        status, _ = await api.request("GET", icon["src"])
        assert status == 200, icon
    # Every file the service worker caches at install is served (one missing would fail its install).
    status, worker = await api.request("GET", "/app/sw.js")
    assert status == 200
    source = worker.decode()
    shell = re.findall(r'"(/[^"]*)"', re.search(r"const SHELL = \[(.*?)\];", source, re.S).group(1))
    shell.append(re.search(r'const OFFLINE = "(.*?)";', source).group(1))
    assert "/app/" in shell and "/app/offline.html" in shell and len(shell) > 15
    for path in shell:
        status, _ = await api.request("GET", path)
        assert status == 200, path
    for path in ("/app/..%2Fapp.js", "/app/.hidden", "/app/nope.js", "/vendor/axe.min.js"):
        status, err = await api.request("GET", path)
        assert status == 404 and err["error"]["code"] == "not_found", path
    status, key = await api.request("GET", "/api/push/vapid-key")
    assert status == 200 and key["public_key"] == b64url(public_point(VAPID))


async def test_vapid_key_absent_and_help_raised_by_a_patient_only(api: Api) -> None:
    status, err = await api.request("GET", "/api/push/vapid-key")
    assert status == 404 and err["error"]["code"] == "push_unavailable"
    patient, carer = await api.register("patient", name="Rosa Lima"), await api.register("caregiver")
    await api.link(patient, carer)
    p_sock, c_sock = await api.socket(patient), await api.socket(carer)
    reply = await c_sock.call("alert:help", {})
    assert reply["ok"] is False and reply["error"]["code"] == "forbidden"
    alert = await p_sock.ok("alert:help", {"note": "I fell"})
    (pushed,) = await c_sock.events.wait("alert:new")
    assert pushed["id"] == alert["id"] and pushed["kind"] == "help_requested" and pushed["body"] == "I fell"
    assert (await p_sock.ok("alert:help", {}))["id"] == alert["id"]  # while it is open: the same alert
    reply = await p_sock.call("alert:help", {"note": "x" * 501})
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_payload"


# --- the story ----------------------------------------------------------------------------------------


async def until(page: Page, expression: str, timeout_s: float = WAIT_S) -> Any:
    """Polls ``expression`` in the page until truthy (the app's policy forbids the eval that
    ``wait_for_function`` uses; ``evaluate`` runs through the DevTools protocol)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await page.evaluate(expression)
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never true: {expression} (last {value!r})")
        await asyncio.sleep(0.2)


class Screens:
    """axe-core on each screen (no serious or critical violation) and, when asked, its screenshot."""

    def __init__(self) -> None:
        self.checked: list[str] = []

    async def check(self, page: Page, name: str, top: bool = False) -> None:
        if not await page.evaluate("typeof window.axe !== 'undefined'"):
            await page.evaluate(AXE.read_text())
        found = await page.evaluate("""async () => (await axe.run(document, {resultTypes: ["violations"]}))
            .violations.filter((v) => v.impact === "serious" || v.impact === "critical")
            .map((v) => `${v.id}: ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`)""")
        assert found == [], f"{name}: {found}"
        self.checked.append(name)
        if SHOTS:
            if top:
                await page.evaluate("window.scrollTo(0, 0)")
            await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), animations="disabled", timeout=15_000)


async def phone(browser: Any, init: str = "", **options: Any) -> tuple[BrowserContext, Page, list[str]]:
    """A phone-sized context with the app's policy enforced; page errors and CSP violations collected."""
    context = await browser.new_context(**PHONE, **options)
    if init:
        await context.add_init_script(init)
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    return context, page, problems


async def register(page: Page, base_url: str, role: str, name: str, email: str, screens: Screens | None) -> None:
    await page.goto(base_url + "/app/")
    await page.locator("#auth-view").wait_for()
    if screens:
        await screens.check(page, "sign-in")
    await page.get_by_role("link", name="Create an account").click()
    await page.locator("#register-view").wait_for()
    form = page.locator("#register-form")
    await form.get_by_label("a caregiver" if role == "caregiver" else "a patient").check()
    await form.get_by_label("Your name").fill(name)
    await form.get_by_label("Email", exact=True).fill(email)
    await form.get_by_label("Password", exact=True).fill(PASSWORD)
    if screens:
        await screens.check(page, "register")
    await page.get_by_role("button", name="Create account").click()
    await page.locator("#patient-home" if role == "patient" else "#carer-home").wait_for()


async def as_user(page: Page, role: str) -> User:
    me = await page.evaluate("({id: __app.session.user.id, email: __app.session.user.email,"
                             " token: __app.session.state.access_token})")
    return User(me["id"], me["email"], role, me["token"], "")


# The QR canvas (one pixel a module) as grey levels (transparent is white), for the caregiver's camera.
QR_PIXELS = """(() => { const c = document.querySelector('#link-qr');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const grey = Array.from({length: c.width * c.height}, (_, i) => (d[4 * i + 3] < 128 ? 255 : d[4 * i]));
  return {size: c.width, grey}; })()"""


def camera_frame(qr: dict[str, Any], width: int = 640, height: int = 480) -> bytes:
    """A Y4M video of one frame (Chromium loops it as its fake camera): the QR enlarged on white."""
    scale = min(width, height) * 3 // 4 // qr["size"]
    luma = bytearray(b"\xff" * width * height)
    left, top = (width - qr["size"] * scale) // 2, (height - qr["size"] * scale) // 2
    for y in range(qr["size"] * scale):
        row = bytes(qr["grey"][(y // scale) * qr["size"] + x // scale] for x in range(qr["size"] * scale))
        start = (top + y) * width + left
        luma[start:start + len(row)] = row
    chroma = b"\x80" * (width // 2 * height // 2)
    return f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode() + b"FRAME\n" + bytes(luma) + chroma * 2


def push_stub(key: ec.EllipticCurvePrivateKey) -> str:
    """The browser's push service, stood in for: a subscription at the trusted origin, keeping the
    application server key the app gave (headless Chromium has no push service of its own)."""
    keys = {"p256dh": b64url(public_point(key)), "auth": b64url(secrets.token_bytes(16))}
    return f"""
      Notification.requestPermission = async () => "granted";
      PushManager.prototype.subscribe = async function (options) {{
        window.__pushKey = btoa(String.fromCharCode(...new Uint8Array(options.applicationServerKey)))
          .replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
        const sub = {{ endpoint: "{PUSH_ORIGIN}/wp/sub-1", expirationTime: null, keys: {json.dumps(keys)} }};
        return {{ ...sub, toJSON: () => sub }};
      }};"""


async def drop_sockets(api: Api, user_id: str) -> None:
    realtime = api.app[SERVER].realtime  # type: ignore[index]
    for sid, principal in list(realtime.principals.items()):
        if str(principal.user_id) == user_id:
            await realtime.sio.disconnect(sid)


async def heard(page: Page, more_than: int = 20) -> dict[str, Any]:
    return await until(page, f"__app.call.stats().then((s) => s.received > {more_than} && s.sent > {more_than}"
                             " && s.energy > 0 && s)")


async def test_patient_and_caregiver_story(app_api: Api, tmp_path: Path) -> None:
    api = app_api
    screens = Screens()
    device_stop = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            browser = await stack.enter_async_context(chromium(FAKE_MEDIA))
            p_ctx, p_page, p_problems = await phone(browser, push_stub(ec.generate_private_key(ec.SECP256R1())))
            c_page, c_problems = p_page, p_problems  # until the caregiver's phone is on

            try:
                # 1. The patient registers and shows a link code (its QR drawn).
                await register(p_page, api.base_url, "patient", "Ana Ribeiro",
                               f"ana-{secrets.token_hex(4)}@example.com", screens)
                patient = await as_user(p_page, "patient")
                await p_page.get_by_role("button", name="Show a link code").click()
                await p_page.locator("#code-box").wait_for()
                code = (await p_page.locator("#link-code").inner_text()).strip()
                assert re.fullmatch(r"[A-Z0-9-]{4,}", code), code
                qr = tmp_path / "qr.y4m"
                qr.write_bytes(camera_frame(await p_page.evaluate(QR_PIXELS)))

                # 2. The caregiver (on a phone whose camera sees that QR) registers, stays signed in across a
                # reload (the refresh token in the HttpOnly cookie, not readable by the page), is told in words
                # that a wrong code is wrong, and scans the QR.
                c_browser = await stack.enter_async_context(
                    chromium((*FAKE_MEDIA, f"--use-file-for-fake-video-capture={qr}")))
                c_ctx, c_page, c_problems = await phone(c_browser, reduced_motion="reduce")  # asked for less motion
                await register(c_page, api.base_url, "caregiver", "Maria Costa",
                               f"maria-{secrets.token_hex(4)}@example.com", None)
                await c_page.reload()
                await c_page.locator("#carer-home").wait_for()
                assert "hm_refresh" not in await c_page.evaluate("document.cookie")
                assert "hm_refresh" in {c["name"] for c in await c_ctx.cookies()}
                await c_page.locator("#redeem-form").get_by_label("Link code").fill("ZZZZ9999")
                await c_page.get_by_role("button", name="Add", exact=True).click()
                await c_page.locator("#toast", has_text="That code is not valid or has expired").wait_for()
                await c_page.get_by_role("button", name="Scan a QR code").click()
                row = c_page.locator(f'.patient-row[data-id="{patient.id}"]')
                await row.wait_for()
                assert "Ana Ribeiro" in await row.inner_text()
                await screens.check(p_page, "patient-link-code")

                # 3. The patient pairs a sensor (its credential shown once), which streams: the caregiver sees
                # the waveform and the heart rate.
                form = p_page.locator("#pair-form")
                await form.get_by_label("Kind").select_option("ecg")
                await form.get_by_label("Serial number").fill(f"SIM-ECG-{patient.id[-6:]}")
                await form.get_by_label("Model").fill("Sim ECG")
                await form.get_by_role("button", name="Pair device").click()
                await p_page.locator("#pair-result").wait_for()
                credential = (await p_page.locator("#pair-credential").inner_text()).strip()
                run = DeviceRun(url=api.base_url, credential=credential, kind="ecg", sampling_rate=250.0,
                                heart_rate=72.0, seed=5)
                tasks.append(asyncio.create_task(stream(run, device_stop)))
                await row.click()
                await c_page.locator("#patient-view").wait_for()
                await until(c_page, "__app.frames >= 3")
                hr = await until(c_page, HEART_RATE, 45)
                assert 60 <= hr <= 85, hr
                await screens.check(c_page, "caregiver-patient-live")
                await c_page.get_by_role("link", name="My patients").click()
                await c_page.locator("#carer-home").wait_for()
                await until(c_page, f"document.querySelector('.patient-row[data-id=\"{patient.id}\"] .row-hr')"
                                    ".textContent.includes('/min')", 20)
                await screens.check(c_page, "caregiver-patients")

                # 4. A crisis reading: its category at once for the patient, the caregiver's screen rings.
                await p_page.get_by_label("Upper (systolic)").fill("192")
                await p_page.get_by_label("Lower (diastolic)").fill("124")
                await p_page.get_by_role("button", name="Save reading").click()
                await p_page.locator("#bp-result[data-category=hypertensive_crisis]").wait_for()
                assert "Crisis" in await p_page.locator("#bp-result").inner_text()
                await c_page.locator("#alert-view.ringing").wait_for(timeout=WAIT_S * 1000)
                icon = "getComputedStyle(document.querySelector('.alarm-icon')).animationName"
                assert await c_page.evaluate(icon) == "none"  # it rings without pulsing
                ringing = "document.querySelector('#alert-view').classList.toggle('ringing')"
                assert await p_page.evaluate(f"{ringing} && {icon}") == "pulse"  # where motion is fine it pulses
                await p_page.evaluate(ringing)
                assert "crisis" in (await c_page.locator("#av-title").inner_text()).lower()
                assert "Ana Ribeiro" in await c_page.locator("#av-patient").inner_text()
                await screens.check(c_page, "caregiver-alert-ringing")

                # 5. The caregiver is handling it; the patient sees who.
                await c_page.get_by_role("button", name="I'm handling it").click()
                await c_page.locator("#alert-view:not(.ringing)").wait_for()
                assert "You are handling it" in await c_page.locator("#av-status").inner_text()
                await p_page.locator("#banner", has_text="Maria Costa is handling it").wait_for(timeout=WAIT_S * 1000)
                await screens.check(p_page, "patient-home", top=True)

                # 5b. "I need help", from the keyboard: the caregiver's screen rings again; they resolve it.
                await p_page.locator("#help-btn").focus()
                await p_page.keyboard.press("Enter")
                await p_page.locator("#help-status", has_text="Your care team has been alerted").wait_for()
                await c_page.locator("#alert-view.ringing", has_text="Help requested").wait_for(timeout=WAIT_S * 1000)
                await c_page.get_by_role("button", name="Resolve").click()
                await c_page.locator("#av-status", has_text="Resolved").wait_for()

                # 6. The caregiver calls the patient; both hear the other; the caregiver's network drops and
                # the call resumes (call:resume and an ICE restart), the audio flowing again.
                await c_page.get_by_role("button", name="Open patient").click()
                await c_page.locator("#patient-view").wait_for()
                await c_page.get_by_role("button", name="Call", exact=True).click()
                await p_page.locator("#call-view").wait_for()
                assert "Maria Costa is calling" in await p_page.locator("#cv-status").inner_text()
                await screens.check(p_page, "patient-incoming-call")
                await p_page.get_by_role("button", name="Accept").click()
                await heard(p_page)
                before = await heard(c_page)
                await screens.check(c_page, "caregiver-in-call")
                await drop_sockets(api, (await as_user(c_page, "caregiver")).id)
                await until(c_page, "__app.call.resumes === 1")
                await heard(c_page, before["received"] + 20)
                await heard(p_page, before["sent"] + 20)
                await p_page.get_by_role("button", name="Mute").click()
                assert await p_page.evaluate("__app.call.local.getAudioTracks()[0].enabled") is False
                assert await p_page.get_by_role("button", name="Unmute").get_attribute("aria-pressed") == "true"
                await c_page.get_by_role("button", name="Hang up").click()
                await p_page.locator("#patient-home").wait_for()
                await c_page.locator("#patient-view").wait_for()
                # The patient video-calls the caregiver, who is rung and declines.
                await p_page.get_by_role("button", name="Video call Maria Costa").click()
                await c_page.locator("#cv-status", has_text="Ana Ribeiro is calling (video)").wait_for()
                await c_page.get_by_role("button", name="Decline").click()
                await p_page.locator("#toast", has_text="They declined").wait_for()
                await c_page.locator("#toast", has_text="You declined the call").wait_for()
                await p_page.locator("#patient-home").wait_for()
                await c_page.locator("#patient-view").wait_for()
                # Again; the caregiver accepts, and the patient turns the camera off (the track the peer
                # connection sends is disabled: black frames) and on again.
                await p_page.get_by_role("button", name="Video call Maria Costa").click()
                await c_page.get_by_role("button", name="Accept").click()
                await heard(p_page)
                await p_page.get_by_role("button", name="Camera off").click()
                assert await p_page.evaluate(SENT_VIDEO) is False
                assert await p_page.get_by_role("button", name="Camera on").get_attribute("aria-pressed") == "true"
                await p_page.get_by_role("button", name="Camera on").click()
                assert await p_page.evaluate(SENT_VIDEO) is True
                await p_page.get_by_role("button", name="Hang up").click()
                await p_page.locator("#patient-home").wait_for()
                await c_page.locator("#patient-view").wait_for()

                # 7. A dose comes due; the patient confirms it.
                p_sock = await api.socket(patient)
                med = await create_med(p_sock, patient.id, schedule={"times": ["03:00"]})
                dose = await add_dose(patient, med, utcnow() + timedelta(seconds=1), slot="story")
                took = p_page.locator(f'.dose[data-id="{dose.id}"] button')
                await took.wait_for(timeout=WAIT_S * 1000)
                await took.click()
                await p_page.locator(f'.dose.state-confirmed[data-id="{dose.id}"]').wait_for()

                # 8. The profile (time zone, language, picture, password); notifications: the subscription made
                # with the server's VAPID key reaches the server.
                await p_page.get_by_role("link", name="Profile").click()
                await p_page.locator("#profile-view").wait_for()
                await p_page.locator("#profile-form[data-loaded]").wait_for()
                await p_page.get_by_label("Time zone").fill("Europe/Lisbon")
                await p_page.get_by_label("Language").select_option("pt")
                await p_page.get_by_role("button", name="Save", exact=True).click()
                await p_page.locator("#toast", has_text="Your profile is saved").wait_for()
                await p_page.get_by_label("Picture").set_input_files(ROOT / "server/static/app/icon-192.png")
                await p_page.locator("#pf-avatar[src^='blob:']").wait_for()
                _, me = await api.request("GET", "/api/me", patient)
                assert me["timezone"] == "Europe/Lisbon" and me["language"] == "pt" and me["avatar_id"], me
                await p_page.get_by_label("Current password").fill(PASSWORD)
                await p_page.get_by_label("New password").fill(PASSWORD + "-new")
                await p_page.get_by_role("button", name="Change password").click()
                await p_page.locator("#toast", has_text="Your password is changed").wait_for()
                await p_page.get_by_role("button", name="Turn on notifications").click()
                await p_page.locator("#push-status", has_text="Notifications are on").wait_for()
                assert await p_page.evaluate("window.__pushKey") == b64url(public_point(VAPID))
                (token,) = await PushToken.find(PushToken.user_id == PydanticObjectId(patient.id)).to_list()
                assert token.provider == "webpush" and token.subscription["endpoint"] == f"{PUSH_ORIGIN}/wp/sub-1"
                await screens.check(p_page, "patient-profile", top=True)

                # 9. The patient removes the caregiver: the caregiver's screen loses the patient at once.
                await p_page.get_by_role("link", name="Home").click()
                await p_page.get_by_role("button", name="Remove Maria Costa").click()
                await c_page.locator("#carer-home").wait_for(timeout=WAIT_S * 1000)
                await row.wait_for(state="detached")
                assert await c_page.locator(".patient-row").count() == 0

                # 10. Offline: the service worker serves the shell's files and an offline page.
                await until(p_page, "navigator.serviceWorker.controller !== null")
                await p_ctx.set_offline(True)
                await p_page.reload()
                await p_page.get_by_role("heading", name="You are offline").wait_for()
                assert await p_page.evaluate("fetch('/app/main.js').then((r) => r.status)") == 200
                await screens.check(p_page, "offline")
                await p_ctx.set_offline(False)

                assert p_problems == [] and c_problems == [], (p_problems, c_problems)
                assert len(screens.checked) >= 10
            except Exception as exc:
                seen = [await page.evaluate("[__app.screen, document.querySelector('#toast').textContent,"
                                            " document.querySelector('#team').textContent]")
                        for page in (p_page, c_page)]
                exc.add_note(f"patient, caregiver: {seen}; problems: {p_problems}, {c_problems}")
                raise
    finally:
        device_stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- a tapped notification ------------------------------------------------------------------------------


async def sign_in(page: Page, base_url: str, user: User) -> None:
    await page.goto(base_url + "/app/")
    await page.locator("#login-email").fill(user.email)
    await page.locator("#login-password").fill(PASSWORD)
    await page.locator("#login-submit").click()
    await page.locator("#patient-home" if user.role == "patient" else "#carer-home").wait_for()


async def pushed(user: User, kind: str) -> dict[str, Any]:
    """What the server's Web Push carries for the user's stored notification of ``kind``."""
    for _ in range(300):  # stored in the background
        note = await Notification.find_one(Notification.user_id == PydanticObjectId(user.id), Notification.kind == kind)
        if note is not None:
            return message_of(note).payload()
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {kind} notification")


# In the service worker: the push handler's body shows the push, the notification is found as the system
# has it, and the click handler's body routes it.
TAP = """async ([msg, tag]) => {
  await shown(msg);
  const [n] = await self.registration.getNotifications({ tag });
  const seen = { title: n.title, data: n.data };
  await opened(n);
  return { ...seen, left: (await self.registration.getNotifications({ tag })).length };
}"""


async def tap(context: BrowserContext, page: Page, msg: dict[str, Any], tag: str) -> None:
    await page.evaluate("location.hash = '#profile'")  # elsewhere first: the tap must move the app
    await page.locator("#profile-view").wait_for()
    await until(page, "navigator.serviceWorker.ready.then((r) => r.active !== null)")
    (worker,) = [w for w in context.service_workers if w.url.endswith("/app/sw.js")]
    seen = await worker.evaluate(TAP, [msg, tag])
    assert seen == {"title": msg["title"], "data": msg["data"], "left": 0}, seen


async def test_a_tapped_notification_opens_its_screen(app_api: Api) -> None:
    """A caregiver's alert notification opens that alert's screen; a patient's dose reminder opens today's
    medicines. Exercised for real, in the app's service worker under a granted notification permission: the
    payload the server's Web Push carries (built from the stored notification by the server's own code) shown
    by the push handler's body (``shown``), the notification read back from the system
    (``registration.getNotifications``), the click handler's body (``opened``: close, find the app's window,
    post it the screen) and the app's routing. Not exercised: the push service delivering the push, the OS
    tap itself (Chromium cannot click a system notification; its two one-line listeners only pass the event
    to ``shown``/``opened``), the window's focus (refused without a tap's user activation, as here) and
    ``clients.openWindow`` when no app window is open."""
    api = app_api
    patient, carer = await api.register("patient", name="Rosa Lima"), await api.register("caregiver")
    await api.link(patient, carer)
    p_sock, c_sock = await api.socket(patient), await api.socket(carer)
    alert = await p_sock.ok("alert:help", {})
    await c_sock.ok("alert:ack", {"alert_id": alert["id"]})  # handled: the caregiver's app will not ring
    med = await create_med(p_sock, patient.id, schedule={"times": ["03:00"]})
    dose = await add_dose(patient, med, utcnow(), slot="tap")
    alert_push, reminder_push = await pushed(carer, "alert"), await pushed(patient, "reminder")
    assert alert_push["data"]["alert_id"] == alert["id"] and reminder_push["data"]["dose_id"] == str(dose.id)
    async with chromium() as browser:
        c_ctx, c_page, c_problems = await phone(browser, permissions=["notifications"])
        await sign_in(c_page, api.base_url, carer)
        await tap(c_ctx, c_page, alert_push, alert["id"])
        await c_page.locator("#alert-view").wait_for()
        assert await c_page.evaluate("location.hash") == f"#alert={alert['id']}"
        assert "Rosa Lima" in await c_page.locator("#av-patient").inner_text()

        p_ctx, p_page, p_problems = await phone(browser, permissions=["notifications"])
        await sign_in(p_page, api.base_url, patient)
        await tap(p_ctx, p_page, reminder_push, str(dose.id))
        await p_page.locator("#patient-home").wait_for()
        assert await p_page.evaluate("[location.hash, document.activeElement.id]") == ["#doses", "doses-title"]
        await p_page.locator(f'.dose[data-id="{dose.id}"]').wait_for()
        assert c_problems == [] and p_problems == [], (c_problems, p_problems)
