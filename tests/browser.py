"""Debian's headless Chromium driven by Playwright (never a browser Playwright downloads itself), and a
streaming patient with a linked clinician: what the dashboard's browser tests and its bench share."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from playwright.async_api import Browser, Page, async_playwright

from devices.simulators.sensor import DeviceRun, stream
from tests.helpers import PASSWORD, Api, User

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


# The pages' Content-Security-Policy forbids eval, which Playwright's wait_for_function(<string>) uses: tests
# that poll the page with it bypass the policy (tests/security/test_browser_hardening.py runs it enforced).
HARNESS_EVAL = True


@contextlib.asynccontextmanager
async def chromium(extra_args: tuple[str, ...] = ()) -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        raise RuntimeError("Debian's chromium is not installed; `make test` installs it (apt-get install chromium)")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args])
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Ward:
    """A patient streaming ECG and PPG from simulated devices, watched by a linked clinician."""

    patient: User
    clinician: User
    runs: list[DeviceRun]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def close(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def pair(api: Api, patient: User, kind: str) -> str:
    status, body = await api.request("POST", f"/api/patients/{patient.id}/devices", patient,
                                     json={"kind": kind, "serial": f"SIM-{kind}-{patient.id[-6:]}", "model": "Sim"})
    assert status == 201, body
    return body["credential"]


async def streaming_ward(api: Api, heart_rate: float = 72.0, kinds: tuple[str, ...] = ("ecg", "ppg"),
                         scenario: str = "normal") -> Ward:
    patient = await api.register("patient", name="Ana Ribeiro")
    clinician = await api.register("clinician", name="Dr. Sofia Costa")
    await api.link(patient, clinician)
    runs = [DeviceRun(url=api.base_url, credential=await pair(api, patient, kind), kind=kind,
                      sampling_rate=250.0 if kind == "ecg" else 100.0, heart_rate=heart_rate, seed=3, scenario=scenario)
            for kind in kinds]
    ward = Ward(patient, clinician, runs)
    ward.tasks = [asyncio.create_task(stream(run, ward.stop)) for run in runs]
    return ward


async def sign_in(page: Page, base_url: str, user: User) -> None:
    await page.goto(base_url + "/")
    await page.fill("#email", user.email)
    await page.fill("#password", PASSWORD)
    await page.click("#login-submit")
    await page.wait_for_selector("#app-view:not([hidden])")
