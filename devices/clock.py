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

        Delays only ever add to an offset, so the slope is fitted through the lower envelope: the smallest
        offset of each of up to 8 consecutive groups of observations, not through every (delayed) one."""
        obs = list(self._obs)
        if len(obs) < 10:
            return 0.0
        groups = min(8, len(obs) // 3)
        size = len(obs) / groups
        points = [min(obs[int(i * size):int((i + 1) * size)], key=lambda p: p[1]) for i in range(groups)]
        xs = [x for x, _ in points]
        ys = [y for _, y in points]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx < 0.5:
            return 0.0
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
        return round(slope * 1e6, 2)
