"""Mapping a device's clock onto the server's, and the drift between them.

Each frame carries ``t0``, the device clock (ms) at its first sample. Network delay only ever
makes a frame arrive later than it was measured, so the smallest ``server - device`` offset seen
is the best estimate of the true offset (taken over the last observations, so drift cannot
accumulate in it); a least-squares slope of offsets over time gives drift.
"""

from __future__ import annotations

from collections import deque

WINDOW = 120  # observations kept for the drift fit


class DeviceClock:
    def __init__(self) -> None:
        self.offset_s: float | None = None  # server seconds minus device seconds
        self._obs: deque[tuple[float, float]] = deque(maxlen=WINDOW)  # (server time, offset)

    def observe(self, device_ms: float, server_s: float) -> None:
        self._obs.append((server_s, server_s - device_ms / 1000.0))
        # Minimum over a bounded window: drift (tens of ppm) moves it by milliseconds within it.
        self.offset_s = min(o for _, o in self._obs)

    def to_server(self, device_ms: float) -> float:
        """Server time (epoch seconds) at which the device measured ``device_ms``."""
        if self.offset_s is None:
            raise ValueError("no observation yet")
        return device_ms / 1000.0 + self.offset_s

    @property
    def drift_ppm(self) -> float:
        """How fast the device clock runs slow (+) or fast (-) against the server's, in parts per million."""
        if len(self._obs) < 10:
            return 0.0
        xs = [x for x, _ in self._obs]
        ys = [y for _, y in self._obs]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx < 1.0:
            return 0.0
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
        return round(slope * 1e6, 2)
