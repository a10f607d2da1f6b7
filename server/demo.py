"""The development demo (``healthmate serve --demo``, what ``make run`` starts): a demo patient wearing
simulated ECG and PPG devices that stream all the time, and a demo clinician linked to that patient (the admin of
a demo clinic, which verifies them).

The accounts, the link and the devices are created once and kept across restarts; the devices get
a fresh credential at each start (only its hash is stored, so the old one cannot be recovered).
The simulator runs in this process as a background task but is a real Socket.IO device client
talking to this server over loopback, exactly as a wearable would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from pymongo.errors import DuplicateKeyError

from devices.registry import Device, new_credential
from server.care.documents import Link, Organisation, User
from server.care.orgs import join
from server.care.security import hash_password
from server.core.config import Settings

if TYPE_CHECKING:  # the simulator (and the scipy it draws signals with) loads only when the demo runs
    from devices.simulators.sensor import DeviceRun

log = logging.getLogger("healthmate.demo")
PASSWORD = "healthmate-demo-2026"
PATIENT_EMAIL = "demo.patient@healthmate.example"
CLINICIAN_EMAIL = "demo.clinician@healthmate.example"
CLINIC = "Demo clinic"
DEVICES = (("ecg", 250.0, "DEMO-ECG-1"), ("ppg", 100.0, "DEMO-PPG-1"))
RETRY_S = 2.0


async def _user(email: str, name: str, role: str) -> User:
    user = await User.find_one(User.email == email)
    if user is not None:
        return user
    user = User(email=email, password_hash=await hash_password(PASSWORD), name=name, role=role)  # type: ignore[arg-type]
    try:
        await user.insert()
    except DuplicateKeyError:  # another process created it meanwhile
        found = await User.find_one(User.email == email)
        assert found is not None
        return found
    return user


async def ensure_accounts() -> tuple[User, User]:
    """The demo patient and clinician, linked (created if missing; a revoked link is left revoked); the
    clinician administers the demo clinic, which verifies them."""
    patient = await _user(PATIENT_EMAIL, "Demo Patient", "patient")
    clinician = await _user(CLINICIAN_EMAIL, "Dr Demo", "clinician")
    assert patient.id is not None and clinician.id is not None
    if not clinician.verified:
        clinic = await Organisation.find_one(Organisation.name == CLINIC) or await Organisation(name=CLINIC).insert()
        assert clinic.id is not None
        clinician = await join(clinic.id, clinician, "admin", None)
    key = Link.key(patient.id, clinician.id)
    if await Link.get(key) is None:
        with contextlib.suppress(DuplicateKeyError):
            await Link(id=key, patient_id=patient.id, member_id=clinician.id, member_role="clinician").insert()
    return patient, clinician


async def device_credential(patient: User, kind: str, serial: str) -> str:
    """The demo device of that kind (paired once), with a credential issued now."""
    device = await Device.find_one(Device.patient_id == patient.id, Device.serial == serial,
                                   Device.revoked_at == None)  # noqa: E711
    if device is None:
        device = Device(patient_id=patient.id, kind=kind, serial=serial, model="Health Mate simulator",  # type: ignore[arg-type]
                        credential_hash="", paired_by=patient.id)  # type: ignore[arg-type]
        await device.insert()
    credential, digest = new_credential(device.id)
    await device.set({Device.credential_hash: digest})
    return credential


async def _listening(url: str) -> None:
    """Wait until the server accepts connections (the demo starts before it listens)."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    while True:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return


async def _keep_streaming(run: DeviceRun) -> None:
    """Stream until cancelled; reconnect (on a new stream) if the server drops us."""
    from devices.simulators.sensor import stream

    await _listening(run.url)
    while True:
        try:
            await stream(run)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("demo %s device: %s; retrying", run.kind, exc)
        await asyncio.sleep(RETRY_S)


async def start(settings: Settings) -> asyncio.Task[Any] | None:
    """Set up the demo data (before the server reports ready), then stream from both demo devices in a
    background task, until it is cancelled."""
    if settings.env == "production":
        log.warning("demo is for development only; not started in production")
        return None
    from devices.simulators.sensor import DeviceRun

    patient, _ = await ensure_accounts()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{settings.port}"
    runs = [DeviceRun(url=url, credential=await device_credential(patient, kind, serial), kind=kind,
                      sampling_rate=rate, heart_rate=72.0, frame_s=0.2 if kind == "ecg" else 0.5)
            for kind, rate, serial in DEVICES]
    log.info("demo: patient %s (id %s) is streaming ECG and PPG; log in as the clinician %s or the patient, "
             "password %s", PATIENT_EMAIL, patient.id, CLINICIAN_EMAIL, PASSWORD)
    return asyncio.create_task(_stream_all(runs), name="demo")


async def _stream_all(runs: list[DeviceRun]) -> None:
    await asyncio.gather(*(_keep_streaming(r) for r in runs))
