"""Rhythm and signal events from the stream of per-second analyses (``ml.signal_stream``).

Pure bookkeeping, no signal processing: ``EventDetector.update`` takes each analysis dict and returns
the events that started or ended with it; ``EventDetector.stalled`` is the wall-clock check the server
calls with the seconds since the stream's last frame. Each event is reported once when it starts and
once when it ends (``"state": "started" | "ended"``), never repeated while it lasts.

Rate conditions (tachycardia, bradycardia) are judged beat by beat on the trimmed mean of the last 6 RR
intervals (the shortest and the longest left out), not on the 10 s ``hr``: a 10 s mean lags a change of
rhythm by ~5-7 s, which would push the alarm well past "sustained 30 s"; the trimmed mean reacts within
3 beats, one missed or extra beat does not move it, and ectopic beats with their compensatory pauses
(bigeminy alternates short and long intervals) average out instead of reading as a fast rate. A run of
beats meeting the condition starts where its first qualifying interval
started and survives interruptions shorter than ``tolerance_s``. Beats from seconds whose quality is
below ``poor_quality`` are ignored, so artefacts do not raise rate alarms.

Signal events: ``poor_signal`` once quality has stayed below ``poor_quality`` for ``poor_signal_s``, named
``no_signal`` instead when most of those seconds held no signal at all (the analysis' ``reason``: flat,
clipped, disconnected). Frequent ectopy (``frequent_ectopy``: ``ectopic_per_min`` above the threshold for
``frequent_ectopy_s``) and irregular rhythm are told apart: irregularity is judged on the intervals
between normal beats only, and ectopy is not reported while the rhythm is irregular (in atrial
fibrillation most beats come "early").
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.rr_intervals import rr_normal


@dataclass(frozen=True)
class Thresholds:
    """Per-patient alarm thresholds (override any field, e.g. ``Thresholds(tachycardia_hr=110)``).

    Irregular rhythm: over the last ``irregular_window_s`` of good-quality RR intervals, both the
    coefficient of variation (SD / mean) and the normalised RMSSD (RMSSD / median RR) exceed 0.12,
    each computed after trimming the most extreme 5 % of values (a few missed or ectopic beats do not
    count). Atrial-fibrillation-like RR (uniform 0.4-1.2 s) scores ~0.25 / ~0.35; sinus rhythm with
    respiratory variation of +/-10 % scores ~0.06 / ~0.08, a resting young adult's strong sinus
    arrhythmia up to ~0.1. It is a suspicion to be confirmed on the ECG, not a diagnosis.
    """

    tachycardia_hr: float = 120.0
    tachycardia_critical_hr: float = 150.0
    tachycardia_s: float = 30.0
    bradycardia_hr: float = 45.0
    bradycardia_critical_hr: float = 40.0
    bradycardia_s: float = 30.0
    irregular_cv: float = 0.12
    irregular_nrmssd: float = 0.12
    irregular_window_s: float = 60.0
    irregular_coverage: float = 0.75  # judge only once this fraction of the window holds good beats
    irregular_min_rr: int = 30
    irregular_s: float = 5.0
    poor_quality: float = 0.5
    poor_signal_s: float = 10.0
    stalled_s: float = 5.0
    frequent_ectopy_per_min: float = 6.0
    frequent_ectopy_s: float = 30.0
    rate_beats: int = 6  # intervals in the running trimmed mean used for rate conditions
    tolerance_s: float = 4.0  # a sustained condition survives interruptions shorter than this
    clear_s: float = 10.0  # an episode ends once its condition has been absent this long


def rr_irregularity(rr: np.ndarray, trim: float = 0.05) -> dict[str, float | None]:
    """Irregularity of a series of RR intervals (seconds): ``cv`` (SD / mean) of the intervals with
    the ``trim`` fraction lowest and highest removed, and ``nrmssd`` (RMS of successive differences,
    largest ``2 * trim`` fraction removed, / median RR). ``None`` with fewer than 3 intervals."""
    rr = np.asarray(rr, dtype=float)
    rr = rr[np.isfinite(rr)]
    n = rr.size
    if n < 3:
        return {"cv": None, "nrmssd": None, "n": n}
    k = int(n * trim)
    core = np.sort(rr)[k:n - k]
    cv = float(core.std(ddof=1) / core.mean())
    diffs = np.sort(np.abs(np.diff(rr)))
    diffs = diffs[:diffs.size - int(diffs.size * 2 * trim)]
    nrmssd = float(math.sqrt(float(diffs.dot(diffs)) / diffs.size) / np.median(rr))
    return {"cv": cv, "nrmssd": nrmssd, "n": n}


class _Condition:
    """A condition that must hold ``sustain_s`` (allowing holes shorter than ``tolerance_s``) to start
    an episode, which ends once the condition has not been seen for ``clear_s``."""

    def __init__(self, sustain_s: float, tolerance_s: float, clear_s: float) -> None:
        self.sustain_s, self.tolerance_s, self.clear_s = sustain_s, tolerance_s, clear_s
        self.run_start: float | None = None
        self.last_true = -math.inf
        self.holding = False  # the latest known observation
        self.active = False

    def update(self, t: float, holds: bool | None, since: float | None = None) -> str | None:
        """``holds``: True / False / None (unknown, e.g. no beat in this second: the latest known
        observation stands until ``tolerance_s`` has passed). ``since``: when the condition started if
        it holds now (default: the start of this second). Returns "start", "end" or None."""
        if holds is not None:
            self.holding = holds
        elif (self.holding and not self.active and self.run_start is not None
              and t - self.last_true <= self.tolerance_s and t - self.run_start >= self.sustain_s):
            self.active = True
            return "start"
        if holds:
            if self.run_start is None or t - self.last_true > self.tolerance_s:
                self.run_start = t - 1.0 if since is None else min(since, t)
            self.last_true = max(self.last_true, t)
            if not self.active and t - self.run_start >= self.sustain_s:
                self.active = True
                return "start"
            return None
        if self.active:
            if t - self.last_true >= self.clear_s:
                self.active = False
                self.run_start = None
                return "end"
        elif self.run_start is not None and t - self.last_true > self.tolerance_s:
            self.run_start = None
        return None


class EventDetector:
    """Turns one stream's per-second analyses into rhythm / signal events (see module docstring)."""

    TYPES = ("tachycardia", "bradycardia", "irregular_rhythm", "frequent_ectopy", "poor_signal", "no_signal",
             "stalled")

    def __init__(self, thresholds: Thresholds | None = None) -> None:
        th = self.thresholds = thresholds or Thresholds()
        self._conditions = {
            "tachycardia": _Condition(th.tachycardia_s, th.tolerance_s, th.clear_s),
            "bradycardia": _Condition(th.bradycardia_s, th.tolerance_s, th.clear_s),
            "irregular_rhythm": _Condition(th.irregular_s, th.tolerance_s, th.clear_s),
            "poor_signal": _Condition(th.poor_signal_s, th.tolerance_s, th.clear_s),
            "frequent_ectopy": _Condition(th.frequent_ectopy_s, th.tolerance_s, th.clear_s),
        }
        self._signal_event = "poor_signal"  # the name the current signal episode started under
        self._signal_seconds = [0, 0]  # seconds of the current poor run: all, and those with no signal at all
        self._irregular: bool | None = None
        self._episodes: dict[str, dict[str, Any]] = {}
        self._recent_rr: deque[tuple[float, float]] = deque(maxlen=max(th.rate_beats, 1))
        # Good-quality (beat time, RR) for the irregularity window; bounded at 4 beats/s.
        self._window_rr: deque[tuple[float, float]] = deque(maxlen=int(th.irregular_window_s * 4) + 8)
        self._t = 0.0
        self._rate: float | None = None

    # ------------------------------------------------------------------ public
    def update(self, analysis: dict[str, Any]) -> list[dict[str, Any]]:
        """Consume one analysis; return the events that started or ended with it."""
        th = self.thresholds
        t = float(analysis["t"])
        self._t = t
        events = self._finish("stalled", t) if "stalled" in self._episodes else []
        quality = float(analysis.get("quality", 0.0))
        good = quality >= th.poor_quality

        events += self._signal_step(t, quality, analysis.get("reason"))

        # Rate conditions, beat by beat (or second by second from ``hr`` if no beats are given).
        beats = list(zip(analysis.get("beats_t", ()), analysis.get("rr", ()), strict=False))
        if "rr" not in analysis:
            hr = analysis.get("hr")
            rate = float(hr) if hr is not None and good else None
            self._rate = rate
            events += self._rate_step(t, rate, None, analysis)
        elif good:
            for beat_t, rr in beats:
                if rr is None or not 0.25 <= rr <= 3.0:
                    continue
                self._recent_rr.append((float(beat_t), float(rr)))
                self._window_rr.append((float(beat_t), float(rr)))
                rrs = sorted(r for _, r in self._recent_rr)
                core = rrs[1:-1] if len(rrs) >= 4 else rrs[len(rrs) // 2:len(rrs) // 2 + 1]
                self._rate = rate = 60.0 * len(core) / sum(core)
                events += self._rate_step(float(beat_t), rate, self._recent_rr, analysis)
        # Between beats the latest beat's verdict stands (for tolerance_s): runs may complete, break,
        # or episodes clear although no beat arrived in this second.
        for kind in ("tachycardia", "bradycardia"):
            events += self._apply(kind, t, None, None, self._rate_detail(kind, analysis))

        events += self._irregular_step(t)
        events += self._ectopy_step(t, analysis.get("ectopic_per_min"))
        return events

    def stalled(self, seconds_since_last_frame: float) -> list[dict[str, Any]]:
        """Wall-clock check, called by the server: "stalled" starts once no frame has arrived for
        ``stalled_s`` seconds and ends on the next call with a smaller value (or the next analysis)."""
        seconds = float(seconds_since_last_frame)
        if seconds >= self.thresholds.stalled_s:
            if "stalled" not in self._episodes:
                return [self._start("stalled", self._t, "warning",
                                    {"seconds_since_last_frame": round(seconds, 1)})]
            return []
        return self._finish("stalled", self._t) if "stalled" in self._episodes else []

    def active(self) -> dict[str, dict[str, Any]]:
        """Episodes in progress, by type."""
        return {kind: dict(event) for kind, event in self._episodes.items()}

    # ------------------------------------------------------------------ internals
    def _rate_step(self, t: float, rate: float | None, recent: deque[tuple[float, float]] | None,
                   analysis: dict[str, Any]) -> list[dict[str, Any]]:
        th = self.thresholds
        events = []
        for kind, holds_at in (("tachycardia", lambda r: r > th.tachycardia_hr),
                               ("bradycardia", lambda r: r < th.bradycardia_hr)):
            holds = None if rate is None else holds_at(rate)
            since = None
            if holds and recent is not None:
                # Back-date the run to the start of its first qualifying interval (the median needs
                # 3 of 5 intervals to flip; those beats were already part of the condition).
                since = min((bt - rr for bt, rr in recent if holds_at(60.0 / rr)), default=None)
            events += self._apply(kind, t, holds, since, self._rate_detail(kind, analysis))
        return events

    def _rate_detail(self, kind: str, analysis: dict[str, Any]) -> dict[str, Any]:
        th = self.thresholds
        return {"rate": None if self._rate is None else round(self._rate, 1), "hr": analysis.get("hr"),
                "threshold": th.tachycardia_hr if kind == "tachycardia" else th.bradycardia_hr}

    def _irregular_step(self, t: float) -> list[dict[str, Any]]:
        th = self.thresholds
        window = self._window_rr
        while window and window[0][0] < t - th.irregular_window_s:
            window.popleft()
        holds = None
        detail: dict[str, Any] = {}
        if len(window) >= th.irregular_min_rr and t - (window[0][0] - window[0][1]) >= (
                th.irregular_coverage * th.irregular_window_s):
            rr = np.fromiter((rr for _, rr in window), dtype=float, count=len(window))
            normal = rr[rr_normal(rr)]  # between normal beats: frequent ectopy is not irregularity
            holds = False  # too few normal intervals to be irregular: ectopy (bigeminy) dominates
            if normal.size >= th.irregular_min_rr:
                figures = rr_irregularity(normal)
                holds = figures["cv"] > th.irregular_cv and figures["nrmssd"] > th.irregular_nrmssd
                detail = {"cv": round(figures["cv"], 3), "nrmssd": round(figures["nrmssd"], 3),
                          "intervals": figures["n"]}
        self._irregular = holds
        return self._apply("irregular_rhythm", t, holds, None, detail)

    def _ectopy_step(self, t: float, per_min: float | None) -> list[dict[str, Any]]:
        th = self.thresholds
        # Judged once the rhythm is known not to be irregular (in atrial fibrillation most beats come early).
        holds = None if per_min is None or self._irregular is None else (
            per_min > th.frequent_ectopy_per_min and not self._irregular)
        return self._apply("frequent_ectopy", t, holds, None,
                           {"ectopic_per_min": per_min, "threshold": th.frequent_ectopy_per_min})

    def _signal_step(self, t: float, quality: float, reason: str | None) -> list[dict[str, Any]]:
        """``poor_signal`` / ``no_signal``: one condition (quality below the threshold), named when it
        starts by what most of its seconds held."""
        th = self.thresholds
        condition = self._conditions["poor_signal"]
        poor = quality < th.poor_quality
        if condition.run_start is None and not condition.active:
            self._signal_seconds = [0, 0]
        if poor:
            self._signal_seconds[0] += 1
            self._signal_seconds[1] += reason == "no_signal"
        change = condition.update(t, poor)
        if change == "start":
            assert condition.run_start is not None
            total, flat = self._signal_seconds
            self._signal_event = "no_signal" if 2 * flat >= total else "poor_signal"
            return [self._start(self._signal_event, condition.run_start, "warning",
                                {"quality": quality, "threshold": th.poor_quality, "reason": reason})]
        if change == "end":
            return self._finish(self._signal_event, condition.last_true)
        return []

    def _apply(self, kind: str, t: float, holds: bool | None, since: float | None,
               detail: dict[str, Any]) -> list[dict[str, Any]]:
        condition = self._conditions[kind]
        change = condition.update(t, holds, since)
        if change == "start":
            assert condition.run_start is not None
            return [self._start(kind, condition.run_start, self._severity(kind), detail)]
        if change == "end":
            return self._finish(kind, condition.last_true)
        return []

    def _severity(self, kind: str) -> str:
        th, rate = self.thresholds, self._rate
        if rate is not None and ((kind == "tachycardia" and rate > th.tachycardia_critical_hr)
                                 or (kind == "bradycardia" and rate < th.bradycardia_critical_hr)):
            return "critical"
        return "warning"

    def _start(self, kind: str, started_at: float, severity: str, detail: dict[str, Any]) -> dict[str, Any]:
        event = {"type": kind, "severity": severity, "started_at": round(started_at, 3), "detail": detail,
                 "state": "started"}
        self._episodes[kind] = event
        return dict(event)

    def _finish(self, kind: str, ended_at: float) -> list[dict[str, Any]]:
        event = self._episodes.pop(kind, None)
        if event is None:
            return []
        return [{**event, "state": "ended", "ended_at": round(ended_at, 3)}]
