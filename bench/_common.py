"""What every bench line carries, and the measuring every bench shares.

Each bench calls ``start(NAME)`` first (it times the machine calibration before any load runs and
starts the bench's time budget) and ``emit(...)`` last, which prints its one JSON line with:

* ``machine``: CPU model, cores, and ``calibration``: a fixed pure-Python loop and a numpy kernel
  (sort + FFT of 2^20 floats), each the best of 3 (1 in smoke runs), in ms, timed in the same run, so that lines from
  different machines can be compared (a machine that takes twice as long on both is about half as fast);
* ``repeats``: how many times each headline configuration ran (3, interleaved with its baseline; 1 in
  smoke runs; fewer when the budget ran out, which ``stopped_on_budget`` then says);
* each headline ``KEY``: the median over the repeats, with ``KEY_min`` and ``KEY_max`` beside it;
* ``budget_s``, ``elapsed_s``, ``stopped_on_budget`` and ``cut_for_budget`` (what was left out to stay
  within the budget).

Costs per operation come from the processes' CPU time (``/proc/PID/stat``, user + system), grouped
(server processes, store, Redis, load generator) by ``CpuMeter``, and from the store commands the
server sent (``store_commands``: PyMongo command monitoring in the server, read from ``/healthz``).

``BENCH_SMOKE=1`` (``python -m bench --smoke``) runs every bench for a few seconds with tiny loads, to
check it still produces its line; ``BENCH_BUDGET_SCALE`` multiplies every budget.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

SMOKE = os.environ.get("BENCH_SMOKE") == "1"
REPEATS = 1 if SMOKE else 3
BUDGET_SCALE = float(os.environ.get("BENCH_BUDGET_SCALE", "1"))
# Wall seconds each bench may take, start-up included. On a machine where every bench runs into its
# budget (e.g. 3x slower than README's: each bench then cuts repeats or steps and says so in its line),
# and even if every one had to be ended (GRACE_S after its budget, then up to END_S more), ``make bench``
# takes at most sum(BUDGETS_S) + 14 x (GRACE_S + END_S) = 1,160 + 280 s = 24 minutes. (``rush``, issue 18, and
# ``push``, issue 15, took their time from the others: alerts and reminders most, whose loads rush plays too;
# ``rooms`` from reminders, scale, ml and startup, which had that much left over in the last run; rush's last
# 60 s from the grace, 15 s → 10 s: no bench of the last runs ended more than 5 s past its budget, and 10 s from
# device_transports, which cuts its repeats to fit; and 50 s more for its alert repeats: 10 s each from accuracy
# and scale, 5 s each from ml, startup, calls and events, which each ended at least 5 s short of what they have now
# in the run of 2026-12-05 06:16, scale and startup cutting repeats as before. Accuracy got its 10 s back from
# scale: at 25 s it left its eighth recording out (it starts one only with 10 s + the longest one's time left),
# and scale used 47-52 s of 75-95 in every run since 2026-12-04.)
BUDGETS_S = {"accuracy": 35, "alerts": 150, "calls": 80, "dashboard": 70, "device_transports": 35, "events": 85,
             "ml": 20, "push": 45, "reminders": 95, "rooms": 10, "rush": 300, "scale": 65, "startup": 30,
             "streams": 140}
SMOKE_BUDGET_S = 60
GRACE_S = 10  # the runner ends a bench still running this long after its budget, and marks it failed
END_S = 10  # from SIGTERM to SIGKILL when the runner ends a bench


def budget_s(name: str) -> float:
    return (SMOKE_BUDGET_S if SMOKE else BUDGETS_S[name]) * BUDGET_SCALE


class Budget:
    """A bench's time budget, from ``start`` on."""

    def __init__(self, name: str, seconds: float | None = None) -> None:
        self.name = name
        self.seconds = budget_s(name) if seconds is None else seconds  # given: a bench run on demand only
        self.started = time.monotonic()
        self.cut: list[str] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def allows(self, seconds: float, what: str) -> bool:
        """Whether ``seconds`` more fit in the budget; if not, ``what`` is recorded as cut for it."""
        if self.left() >= seconds:
            return True
        self.cut.append(what)
        return False

    def rounds(self, count: int, what: str = "repeat", reserve: float = 10.0) -> Iterator[int]:
        """0 .. count - 1, each further round only if one as long as the longest so far still fits, with
        ``reserve`` seconds left after it (for what follows and the clean-up); else the rest is cut."""
        longest = 0.0
        for r in range(count):
            if r and self.left() - reserve < longest:
                self.cut.append(f"{what}s {r + 1}-{count}")
                return
            t = time.monotonic()
            yield r
            longest = max(longest, time.monotonic() - t)

    def fields(self) -> dict[str, Any]:
        return {"budget_s": round(self.seconds), "elapsed_s": round(self.elapsed(), 1),
                "stopped_on_budget": bool(self.cut), "cut_for_budget": self.cut}


# ------------------------------------------------------------------------------------------------ machine
def _best_ms(fn: Callable[[], object], runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return round(best * 1000, 1)


def _python_loop() -> int:
    total = 0
    for i in range(1_000_000):
        total += i * i % 7
    return total


def calibrate() -> dict[str, float]:
    """Milliseconds for a fixed pure-Python loop and a fixed numpy kernel (both single-threaded)."""
    import numpy as np

    x = np.random.default_rng(0).random(1 << 20)
    runs = 1 if SMOKE else 3
    return {"python_loop_ms": _best_ms(_python_loop, runs),
            "numpy_kernel_ms": _best_ms(lambda: (np.sort(x), np.fft.rfft(x)), runs)}


def machine(calibration: bool = True) -> dict[str, Any]:
    cpu, mem_kb = platform.processor(), 0
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal:"))
    except (OSError, StopIteration):
        pass
    out: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 1024 / 1024, 1),
                           "python": platform.python_version(), "load_avg_1m": round(os.getloadavg()[0], 1)}
    if calibration:
        out["calibration"] = calibrate()
    return out


_machine: dict[str, Any] = {}


def _terminated(*_: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the clean-up (servers, stores) must run
    raise SystemExit(143)


def start(name: str, seconds: float | None = None) -> Budget:
    """The bench's budget, from now (``seconds`` for one not in ``BUDGETS_S``); the machine is calibrated first
    (before any load of the bench). SIGTERM (the runner ending a bench over its budget) unwinds the bench, so
    that it stops what it started."""
    signal.signal(signal.SIGTERM, _terminated)
    _machine.update(machine())
    return Budget(name, seconds)


# ------------------------------------------------------------------------------------------------ figures
def pct(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100, nearest rank) of ``values``; None if there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def rounded(v: float | None) -> float | None:
    """Three significant figures or so: what the benches' noise allows."""
    if v is None:
        return None
    if abs(v) >= 100:
        return round(v)
    return round(v, 2 if abs(v) >= 1 else 3)


def _stats(values: list[float | None]) -> tuple[float | None, float | None, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return None, None, None
    return rounded(statistics.median(present)), rounded(min(present)), rounded(max(present))


Samples = dict[str, "list[float | None] | dict[str, list[float | None]]"]


def spread(samples: Samples) -> dict[str, Any]:
    """Each ``KEY``'s median over its repeats, with ``KEY_min`` and ``KEY_max``; a key holding a dict of
    lists (e.g. one per server) gets dicts of medians, minima and maxima."""
    out: dict[str, Any] = {}
    for key, values in samples.items():
        if isinstance(values, dict):
            parts = {k: _stats(v) for k, v in values.items()}
            out[key], out[f"{key}_min"], out[f"{key}_max"] = ({k: s[i] for k, s in parts.items()} for i in range(3))
        else:
            out[key], out[f"{key}_min"], out[f"{key}_max"] = _stats(values)
    return out


def repeats_of(samples: Samples) -> int:
    lengths = [len(v) for value in samples.values() for v in (value.values() if isinstance(value, dict) else [value])]
    return min(lengths, default=0)


def emit(budget: Budget, headline: Samples, **figures: Any) -> dict[str, Any]:
    """Print the bench's JSON line: the headline spread, the other figures and the common fields."""
    line = {"bench": budget.name, **spread(headline), **figures,
            "repeats": repeats_of(headline),
            "machine": _machine or machine(calibration=False), **budget.fields(), "smoke": SMOKE}
    print(json.dumps(line), flush=True)
    return line


# ------------------------------------------------------------------------------------------------ CPU time
def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def own_processes(marker: str) -> list[int]:
    """This process's descendants whose command line holds ``marker`` (e.g. a load generator's script)."""
    return [p for p in descendants(os.getpid()) if marker in cmdline(p)]


def is_store(pid: int) -> bool:
    return "secantusd" in cmdline(pid)


def server_pids(pid: int) -> list[int]:
    """A ``healthmate serve`` process and its children (workers, analysis processes), not the store."""
    return [pid, *(p for p in descendants(pid) if not is_store(p))]


def store_pids(pid: int) -> list[int]:
    """The embedded store a ``healthmate serve`` process started."""
    return [p for p in descendants(pid) if is_store(p)]


Pids = Callable[[], Iterable[int]] | Iterable[int]


class CpuMeter:
    """CPU seconds each group of processes spent between ``start`` and ``read``. Groups are lists of
    pids or functions giving them (looked up at each sample: workers come and go); a process that
    appears between the samples counts whole, one gone by ``read`` is lost (so read before a load
    generator exits)."""

    def __init__(self, **groups: Pids) -> None:
        self.groups = groups
        self._before: dict[str, dict[int, float]] = {}
        self._t0 = 0.0

    def _sample(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for name, pids in self.groups.items():
            found = pids() if callable(pids) else pids
            out[name] = {p: c for p in found if p and (c := cpu_s(p)) is not None}
        return out

    def start(self) -> CpuMeter:
        self._before = self._sample()
        self._t0 = time.monotonic()
        return self

    def read(self) -> tuple[dict[str, float], float]:
        """(CPU seconds per group, wall seconds) since ``start``."""
        after, seconds = self._sample(), time.monotonic() - self._t0
        return {name: sum(c - self._before.get(name, {}).get(p, 0.0) for p, c in pids.items())
                for name, pids in after.items()}, seconds


def per_op_us(cpu: dict[str, float], ops: float) -> dict[str, float | None]:
    """CPU microseconds per operation for each group."""
    return {k: rounded(v * 1e6 / ops) if ops else None for k, v in cpu.items()}


def cores(cpu: dict[str, float], seconds: float) -> dict[str, float]:
    return {k: round(v / seconds, 2) for k, v in cpu.items()}


# ------------------------------------------------------------------------------------------------ store commands
def store_commands(url: str, processes: int = 1, timeout: float = 10) -> int:
    """Store commands the server has sent so far (PyMongo command monitoring, ``/healthz``'s
    ``store_commands``), summed over its ``processes`` worker processes: each request may land on any
    worker (SO_REUSEPORT), so ask until each has answered."""
    seen: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < processes:
        with urllib.request.urlopen(urllib.request.Request(url + "/healthz", headers={"Connection": "close"}),
                                    timeout=5) as resp:
            body = json.loads(resp.read())
        seen[body["process"]] = int(body["store_commands"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {processes} server processes answered /healthz")
    return sum(seen.values())
