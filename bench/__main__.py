"""``make bench``: run every benchmark, echo its output, and collect the JSON lines in
``bench/results/latest.json`` with the machine they ran on. ``python -m bench NAME ...`` runs those
only and replaces their entries (each entry says when it ran)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Every module under bench/ not starting with "_" is a benchmark; they run in name order.
BENCHES = sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))


def machine() -> dict[str, object]:
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "python": platform.python_version(), "system": platform.platform()}


def main(names: list[str]) -> int:
    latest = HERE / "results" / "latest.json"
    previous = json.loads(latest.read_text()) if names and latest.exists() else {}
    results: dict[str, object] = previous.get("results", {})
    failed = []
    for name in names or BENCHES:
        print(f"== bench {name}", flush=True)
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", f"bench.{name}"], stdout=subprocess.PIPE, text=True,
                              cwd=HERE.parent)
        sys.stdout.write(proc.stdout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            failed.append(name)
            continue
        figures = json.loads(lines[-1])
        figures["seconds"] = round(time.monotonic() - started, 1)
        figures["when"] = datetime.now(UTC).isoformat(timespec="seconds")
        results[figures.get("bench", name)] = figures
    out = {"when": previous.get("when", datetime.now(UTC).isoformat(timespec="seconds")),  # of the full run
           "machine": machine(), "results": results}
    (HERE / "results").mkdir(exist_ok=True)
    latest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote bench/results/latest.json ({len(results)} benches; failed: {failed or 'none'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
