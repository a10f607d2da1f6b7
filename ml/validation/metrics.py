"""Judging live analyses against a recording's reference, window by window.

An analysis at ``t`` (seconds since the streamed part began) rates the last ``window_s`` of final
signal, ``[t - lag - window_s, t - lag]`` (beats are final ``lag`` seconds after they happen, see
``StreamAnalyser.lag_s``). Its reference rate counts the reference beats in that same window the same
way (60 x intervals / their total length, intervals that start and end inside it). The window is
*clean* when neither it nor the seconds after it up to ``t`` touch a pulseless or artefact span;
*pulseless* when the last ``tail_s`` seconds before ``t`` lie wholly in a pulseless span.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ml.validation.recordings import Recording, Span


def _inside(spans: tuple[Span, ...], start: float, end: float) -> bool:
    return any(s <= start and end <= e for s, e in spans)


def _touches(spans: tuple[Span, ...], start: float, end: float) -> bool:
    return any(s < end and start < e for s, e in spans)


def reference_rate(beats: np.ndarray, start: float, end: float) -> float | None:
    inside = beats[(beats >= start) & (beats <= end)]
    return 60.0 * (inside.size - 1) / (inside[-1] - inside[0]) if inside.size >= 3 else None


def judge(recording: Recording, analyses: list[dict[str, Any]], offset_s: float = 0.0, lag_s: float = 0.0,
          window_s: float = 10.0, tail_s: float = 3.0) -> dict[str, Any]:
    """Per-recording figures for ``analyses`` of the part of ``recording`` that starts at ``offset_s``."""
    spans = recording.pulseless + recording.artefact
    beats = recording.beats
    errors, shown, clean, pulseless, rates_on_pulseless = [], 0, 0, 0, 0
    for a in analyses:
        t = offset_s + float(a["t"])
        start, end = t - lag_s - window_s, t - lag_s
        if _inside(recording.pulseless, t - tail_s, t):
            pulseless += 1
            rates_on_pulseless += a.get("hr") is not None
            continue
        if start < offset_s or _touches(spans, start, t):
            continue
        expected = reference_rate(beats, start, end)
        if expected is None:
            continue
        clean += 1
        if a.get("hr") is not None:
            shown += 1
            errors.append(abs(float(a["hr"]) - expected))
    err = np.asarray(errors)
    return {"recording": recording.name, "kind": recording.kind, "sampling_rate": round(recording.sampling_rate, 2),
            "clean_windows": clean,
            "within_5": round(float(np.mean(err <= 5.0)), 4) if err.size else None,
            "within_2": round(float(np.mean(err <= 2.0)), 4) if err.size else None,
            "mae": round(float(err.mean()), 2) if err.size else None,
            "coverage": round(shown / clean, 4) if clean else None,
            "pulseless_windows": pulseless, "rates_on_pulseless": rates_on_pulseless}


def meets_goals(figures: dict[str, Any]) -> bool:
    """The goals of issue 16: >= 95 % of clean windows within 5/min, a rate on >= 95 % of them, and no
    rate on a pulseless window."""
    return (figures["rates_on_pulseless"] == 0 and (figures["clean_windows"] == 0 or (
        figures["within_5"] is not None and figures["within_5"] >= 0.95 and figures["coverage"] >= 0.95)))
