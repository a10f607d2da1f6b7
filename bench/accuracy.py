"""Live heart rate on real recordings: each whole recording of the validation set (ml/validation/data,
real ECG and PPG from PyPI wheels, see its README) streamed through the device frame protocol (binary
float32 frames of 1 s, each acked) to one ``healthmate serve`` process on the embedded store, faster
than real time, and every ``live:analysis`` a watcher receives judged against the recording's
reference (``ml.validation.metrics``): per recording, windows compared (clean ones), share within
+/-5 and +/-2 /min, MAE, coverage (share of clean windows with a rate), windows with no pulse and the
rates shown on them (must be 0). ``seconds`` per recording: from the stream's opening to its last
analysis received. Goals (issue 16): >= 95 % within 5/min and >= 95 % coverage on every recording,
0 rates on pulseless windows."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time

from bench._servers import UNLIMITED
from ml.validation.metrics import meets_goals
from ml.validation.recordings import RECORDINGS
from server.infra.embedded_store import free_port
from tests.accuracy import judge_live
from tests.helpers import Api, ServerProcess


async def run() -> dict[str, object]:
    entries = []
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess({"HEALTHMATE_DATA_DIR": tmp, "HEALTHMATE_LOG_LEVEL": "WARNING", **UNLIMITED},
                               free_port())
        await server.start()
        try:
            async with Api(server.url) as api:
                for recording in RECORDINGS.values():
                    started = time.monotonic()
                    figures = await judge_live(api, recording)
                    figures.update(seconds=round(time.monotonic() - started, 1),
                                   signal_s=round(recording.seconds, 1), reference=recording.reference,
                                   source=recording.source, licence=recording.licence,
                                   meets_goals=meets_goals(figures))
                    print(json.dumps(figures), flush=True)
                    entries.append(figures)
        finally:
            await server.stop()
    return {"bench": "accuracy", "recordings": entries, "all_meet_goals": all(e["meets_goals"] for e in entries),
            "frames": "binary float32, 1 s, acked one by one", "server": "healthmate serve, 1 analysis worker",
            "store": "embedded SecantusDB"}


def main() -> None:
    figures = asyncio.run(run())
    for e in figures["recordings"]:  # type: ignore[attr-defined]
        print(f"{e['recording']:24s} {e['kind']} {e['sampling_rate']:>7} Hz  clean {e['clean_windows']:4d}  "
              f"±5 {e['within_5']}  ±2 {e['within_2']}  MAE {e['mae']}  coverage {e['coverage']}  "
              f"pulseless {e['pulseless_windows']} (rates {e['rates_on_pulseless']})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
