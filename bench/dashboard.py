"""The clinician dashboard under a live stream: frames per second drawn and JS heap growth.

One server process (``healthmate serve`` on the embedded store), a patient streaming simulated ECG
(250 Hz) and PPG (100 Hz) in real time, and Debian's headless Chromium showing that patient's live
view at the default 125 Hz display rate. After a 20 s warm-up it counts the page's
requestAnimationFrame draws and reads the JS heap (CDP ``Performance.getMetrics`` JSHeapUsedSize,
each time after a forced collection with ``HeapProfiler.collectGarbage``) over ``DASHBOARD_BENCH_S``
seconds (default 300). Store: SecantusDB (embedded), which only holds the history here."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time

from playwright.async_api import CDPSession

from server.infra.embedded_store import free_port
from tests.browser import chromium, sign_in, streaming_ward
from tests.helpers import Api, ServerProcess

DURATION_S = float(os.environ.get("DASHBOARD_BENCH_S", "300"))
WARMUP_S = 20.0
SAMPLE_EVERY_S = 30.0


async def heap_mb(cdp: CDPSession) -> float:
    await cdp.send("HeapProfiler.collectGarbage")
    metrics = await cdp.send("Performance.getMetrics")
    used = next(m["value"] for m in metrics["metrics"] if m["name"] == "JSHeapUsedSize")
    return used / 1024 / 1024


async def run() -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess({"HEALTHMATE_DATA_DIR": tmp, "HEALTHMATE_LOG_LEVEL": "WARNING"}, free_port())
        await server.start()
        try:
            async with Api(server.url) as api:
                ward = await streaming_ward(api)
                try:
                    async with chromium() as browser:
                        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                        cdp = await page.context.new_cdp_session(page)
                        await cdp.send("Performance.enable")
                        await sign_in(page, api.base_url, ward.clinician)
                        await page.click(f'.patient-row[data-id="{ward.patient.id}"]')
                        await page.wait_for_function("window.__dashboard.frames >= 2", timeout=30_000)
                        await asyncio.sleep(WARMUP_S)
                        start_heap = await heap_mb(cdp)
                        start_draws, start_frames = await page.evaluate(
                            "[window.__dashboard.draws, window.__dashboard.frames]")
                        started = time.monotonic()
                        samples = [start_heap]
                        while (elapsed := time.monotonic() - started) < DURATION_S:
                            await asyncio.sleep(min(SAMPLE_EVERY_S, DURATION_S - elapsed))
                            samples.append(await heap_mb(cdp))
                            print(f"  {time.monotonic() - started:5.0f} s: heap {samples[-1]:.2f} MB", flush=True)
                        draws, frames = await page.evaluate("[window.__dashboard.draws, window.__dashboard.frames]")
                        elapsed = time.monotonic() - started
                finally:
                    await ward.close()
        finally:
            await server.stop()
    fps = (draws - start_draws) / elapsed
    return {"bench": "dashboard", "fps": round(fps, 1), "heap_growth_mb": round(samples[-1] - start_heap, 2),
            "heap_start_mb": round(start_heap, 2), "heap_max_mb": round(max(samples), 2),
            "stream_frames_per_s": round((frames - start_frames) / elapsed, 2), "duration_s": round(elapsed),
            "display_rate_hz": 125, "browser": "Debian chromium, headless", "store": "embedded SecantusDB"}


def main() -> None:
    figures = asyncio.run(run())
    print(f"{figures['fps']} frames/s drawn over {figures['duration_s']} s; JS heap {figures['heap_start_mb']} MB "
          f"at start, grew {figures['heap_growth_mb']} MB (max {figures['heap_max_mb']} MB)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
