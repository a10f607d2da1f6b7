"""The clinician dashboard under a live stream: frames per second drawn and JS heap growth.

One server process (``healthmate serve`` on the embedded store), a patient streaming simulated ECG
(250 Hz) and PPG (100 Hz) in real time, and Debian's headless Chromium showing that patient's live
view at the default 125 Hz display rate. After a WARMUP_S warm-up it counts the page's
requestAnimationFrame draws and reads the JS heap (CDP ``Performance.getMetrics`` JSHeapUsedSize,
each time after a forced collection with ``HeapProfiler.collectGarbage``) over ``DASHBOARD_BENCH_S``
seconds (default 60, shortened if the budget would not hold it), in REPEATS equal segments: ``fps`` is
the median of the segments' draw rates; the heap growth is over the whole window. Store: SecantusDB
(embedded), which only holds the history here."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from playwright.async_api import CDPSession, Page

from bench._common import REPEATS, SMOKE, Budget, emit, spread, start
from server.infra.embedded_store import EmbeddedStore, free_port
from tests.browser import HARNESS_EVAL, chromium, sign_in, streaming_ward
from tests.helpers import Api, ServerProcess

DURATION_S = float(os.environ.get("DASHBOARD_BENCH_S", 1.5 if SMOKE else 60))
WARMUP_S = 1.0 if SMOKE else 10.0
TEARDOWN_S = 15.0


async def heap_mb(cdp: CDPSession) -> float:
    await cdp.send("HeapProfiler.collectGarbage")
    metrics = await cdp.send("Performance.getMetrics")
    used = next(m["value"] for m in metrics["metrics"] if m["name"] == "JSHeapUsedSize")
    return used / 1024 / 1024


async def run(budget: Budget) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddedStore(Path(tmp) / "store")  # shared with `healthmate org create`, who makes the clinician's org
        env = {"HEALTHMATE_DATA_DIR": tmp, "HEALTHMATE_LOG_LEVEL": "WARNING",
               "HEALTHMATE_MONGODB_URL": await store.start()}
        server = ServerProcess(env, free_port())
        await server.start()
        try:
            async with Api(server.url, operator_env=env) as api:
                ward = await streaming_ward(api)
                try:
                    async with chromium() as browser:
                        page = await browser.new_page(viewport={"width": 1400, "height": 1000}, bypass_csp=HARNESS_EVAL)
                        cdp = await page.context.new_cdp_session(page)
                        await cdp.send("Performance.enable")
                        await sign_in(page, api.base_url, ward.clinician)
                        await page.click(f'.patient-row[data-id="{ward.patient.id}"]')
                        await page.wait_for_function("window.__dashboard.frames >= 2", timeout=30_000)
                        await asyncio.sleep(WARMUP_S)
                        duration = max(min(DURATION_S, budget.left() - TEARDOWN_S), min(DURATION_S, 1.5))
                        if duration < DURATION_S:
                            budget.cut.append(f"observed {duration:.0f} s of {DURATION_S:.0f}")
                        return await observe(page, cdp, duration)
                finally:
                    await ward.close()
        finally:
            await server.stop()
            await store.stop()


async def observe(page: Page, cdp: CDPSession, duration: float) -> dict[str, Any]:
    """Draws per second in each of REPEATS segments of ``duration``, and the heap after each."""
    start_heap = await heap_mb(cdp)
    start_frames = await page.evaluate("window.__dashboard.frames")
    started = time.monotonic()
    samples, fps = [start_heap], []
    for _ in range(REPEATS):
        draws, t = await page.evaluate("window.__dashboard.draws"), time.monotonic()
        await asyncio.sleep(duration / REPEATS)
        fps.append((await page.evaluate("window.__dashboard.draws") - draws) / (time.monotonic() - t))
        samples.append(await heap_mb(cdp))
        print(f"  {time.monotonic() - started:5.0f} s: {fps[-1]:.1f} fps, heap {samples[-1]:.2f} MB", flush=True)
    elapsed = time.monotonic() - started
    frames = await page.evaluate("window.__dashboard.frames")
    return {"fps": fps, "heap_growth_mb": round(samples[-1] - start_heap, 2), "heap_start_mb": round(start_heap, 2),
            "heap_max_mb": round(max(samples), 2), "stream_frames_per_s": round((frames - start_frames) / elapsed, 2),
            "duration_s": round(elapsed)}


def main() -> None:
    budget = start("dashboard")
    figures = asyncio.run(run(budget))
    fps = figures.pop("fps")
    print(f"{spread({'fps': fps})['fps']} frames/s drawn (median of {len(fps)}) over {figures['duration_s']} s; "
          f"JS heap {figures['heap_start_mb']} MB at start, grew {figures['heap_growth_mb']} MB "
          f"(max {figures['heap_max_mb']} MB)")
    emit(budget, {"fps": fps}, **figures, display_rate_hz=125, browser="Debian chromium, headless",
         store="embedded SecantusDB")


if __name__ == "__main__":
    main()
