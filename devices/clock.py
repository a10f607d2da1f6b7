"""Mapping a device's clock onto the server's, and the drift between them.

Each frame carries ``t0``, the device clock (ms) at its first sample. Network delay only ever
makes a frame arrive later than it was measured, so the smallest ``server - device`` offset seen
is the best estimate of the true offset (taken over the last observations, so drift cannot
accumulate in it); the line under all offsets that fits them best gives drift (see `drift_ppm`).
"""

from __future__ import annotations

from collections import deque
from itertools import pairwise

WINDOW = 120  # observations kept for the drift fit


class DeviceClock:
    def __init__(self) -> None:
        self.offset_s: float | None = None  # server seconds minus device seconds
        self._obs: deque[tuple[float, float]] = deque(maxlen=WINDOW)  # (server time, offset)
        self._count = 0
        self._minima: deque[tuple[int, float]] = deque()  # (observation number, offset), offsets increasing

    def observe(self, device_ms: float, server_s: float) -> None:
        offset = server_s - device_ms / 1000.0
        self._obs.append((server_s, offset))
        # Minimum over the last WINDOW observations (drift, tens of ppm, moves it by milliseconds within
        # it), kept as a monotonic queue: O(1) per frame rather than a scan of the window.
        minima = self._minima
        while minima and minima[-1][1] >= offset:
            minima.pop()
        minima.append((self._count, offset))
        if minima[0][0] <= self._count - WINDOW:
            minima.popleft()
        self._count += 1
        self.offset_s = minima[0][1]

    def to_server(self, device_ms: float) -> float:
        """Server time (epoch seconds) at which the device measured ``device_ms``."""
        if self.offset_s is None:
            raise ValueError("no observation yet")
        return device_ms / 1000.0 + self.offset_s

    @property
    def drift_ppm(self) -> float:
        """How fast the device clock runs slow (+) or fast (-) against the server's, in parts per million.

        Delays only ever add to an offset, so the true offsets are a line under every observation. Of those
        lines, the one highest at the observations' mean time (the lower convex hull's edge over it) fits best
        (Moon, Skelly & Towsley, "Estimation and removal of clock skew from network delay measurements", 1999).
        Frames held up together, by a stalled sender or a busy server, lie above it and do not move it."""
        obs = sorted(self._obs)
        if len(obs) < 10 or obs[-1][0] - obs[0][0] < 1.0:
            return 0.0
        hull: list[tuple[float, float]] = []
        for x, y in obs:
            while len(hull) >= 2 and _turn(hull[-2], hull[-1], (x, y)) <= 0:
                hull.pop()
            hull.append((x, y))
        mean = sum(x for x, _ in obs) / len(obs)
        for (x1, y1), (x2, y2) in pairwise(hull):
            if x1 <= mean <= x2 and x2 > x1:
                return round((y2 - y1) / (x2 - x1) * 1e6, 2)
        return 0.0


def _turn(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> float:
    """Positive when a → b → c turns counter-clockwise (c lies above the line through a and b)."""
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
