"""``make bench``: run every benchmark, echo its output, and collect the JSON lines in
``bench/results/latest.json`` with the machine they ran on; then README's bench table is written
from it. ``python -m bench NAME ...`` runs those only and replaces their entries (each entry says when
it ran); a bench that fails, or is still running ``GRACE_S`` after its budget (then ended), gets an
entry saying so instead of keeping its old figures. ``--smoke``: every bench for a few seconds with
tiny loads (``BENCH_SMOKE=1``), to check that each still produces its line; nothing is written unless
``--out FILE`` says where."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench._common import BUDGET_SCALE, BUDGETS_S, END_S, GRACE_S, budget_s, machine

HERE = Path(__file__).resolve().parent
LATEST = HERE / "results" / "latest.json"
# Every module under bench/ not starting with "_" is a benchmark; they run in name order.
BENCHES = sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))
assert set(BENCHES) == set(BUDGETS_S), "every bench has a budget in bench/_common.py"


def _end(name: str, proc: subprocess.Popen[str], why: list[str]) -> None:
    """The bench's process group (its servers and load generators too): SIGTERM, then SIGKILL."""
    why.append(f"ended: still running {GRACE_S * BUDGET_SCALE:.0f} s after its {budget_s(name):.0f} s budget")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(END_S)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def run(name: str, env: dict[str, str]) -> dict[str, Any]:
    """Run one bench, echoing its output; its figures, or an entry saying why there are none."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", f"bench.{name}"], stdout=subprocess.PIPE, text=True,
                            cwd=HERE.parent, env=env, start_new_session=True)
    why: list[str] = []
    timer = threading.Timer(budget_s(name) + GRACE_S * BUDGET_SCALE, _end, (name, proc, why))
    timer.start()
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        lines.append(line.rstrip("\n"))
    code = proc.wait()
    timer.cancel()
    found = [ln for ln in lines if ln.startswith("{") and '"bench"' in ln]
    entry: dict[str, Any]
    if code == 0 and found and not why:
        entry = json.loads(found[-1])
    else:
        entry = {"bench": name, "run_failed": why[0] if why else f"exit status {code}" if code else "no JSON line",
                 "output_tail": lines[-5:]}
    entry["seconds"] = round(time.monotonic() - started, 1)
    entry["when"] = datetime.now(UTC).isoformat(timespec="seconds")
    return entry


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="benches to run (default all): " + ", ".join(BENCHES))
    parser.add_argument("--smoke", action="store_true", help="a few seconds each, tiny loads: does each still work?")
    parser.add_argument("--out", type=Path, help=f"results file (default {LATEST.relative_to(HERE.parent)}; "
                                                 "none with --smoke)")
    args = parser.parse_args(argv)
    if unknown := set(args.names) - set(BENCHES):
        parser.error(f"no such bench: {', '.join(sorted(unknown))}")
    out = args.out or (None if args.smoke else LATEST)
    env = {**os.environ, "BENCH_SMOKE": "1" if args.smoke else "0"}
    previous = json.loads(out.read_text()) if args.names and out is not None and out.exists() else {}
    results: dict[str, Any] = previous.get("results", {})
    failed = []
    for name in args.names or BENCHES:
        print(f"== bench {name} (budget {budget_s(name):.0f} s)", flush=True)
        results[name] = entry = run(name, env)
        if "run_failed" in entry:
            failed.append(name)
            print(f"== bench {name} FAILED: {entry['run_failed']}", flush=True)
    if out is not None:
        doc = {"when": previous.get("when", datetime.now(UTC).isoformat(timespec="seconds")),  # of the full run
               "machine": machine(calibration=False), "results": results}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {out} ({len(results)} benches; failed: {failed or 'none'})")
        if out == LATEST:
            from bench._table import write_readme

            write_readme(doc)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
