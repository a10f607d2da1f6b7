"""Plots kept with the report (``docs/accuracy/<recording>.png``): for each recording, the live rate against
the reference rate over the whole recording (top), then the signal around the places where the live
beats and the reference beats disagree, to check them by eye.

    python -m ml.validation.plots [NAME ...]

The analyses come from ``StreamAnalyser`` fed in 1 s frames in-process (what each analysis worker
runs; ``bench/accuracy.py`` measures the same through a running server). Needs matplotlib (installed
with NeuroKit2).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from ml.signal_stream import StreamAnalyser, stream_filter_design
from ml.validation.metrics import reference_rate
from ml.validation.recordings import RECORDINGS, Recording
from ml.validation.reference import judged

OUT = Path(__file__).resolve().parents[2] / "docs" / "accuracy"
MAX_ZOOMS = 6


def analyse(recording: Recording) -> tuple[list[dict[str, Any]], float]:
    fs = recording.sampling_rate
    analyser = StreamAnalyser(recording.kind, fs)  # type: ignore[arg-type]
    x, step, out = recording.signal, round(fs), []
    for i in range(0, x.size, step):
        out += analyser.push(x[i:i + step])
    return out, analyser.lag_s


def disagreements(recording: Recording, live: np.ndarray, tolerance: float = 0.1) -> list[float]:
    ref = recording.beats
    if not ref.size or not live.size:
        return []
    live_only = [b for b in live if np.abs(ref - b).min() > tolerance]
    return sorted(live_only + [b for b in ref if np.abs(live - b).min() > tolerance])


def plot(recording: Recording) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scipy.signal

    fs = recording.sampling_rate
    analyses, lag = analyse(recording)
    live = judged(recording, np.array([b for a in analyses for b in a["beats_t"]]))
    t = np.array([a["t"] for a in analyses])
    hr = np.array([np.nan if a["hr"] is None else a["hr"] for a in analyses])
    ref = np.array([reference_rate(recording.beats, s - lag - 10, s - lag) or np.nan for s in t])
    zooms: list[float] = []
    for c in disagreements(recording, live):
        if not zooms or c - zooms[-1] > 4:
            zooms.append(c)
    zooms = zooms[:MAX_ZOOMS]
    fig, axes = plt.subplots(1 + len(zooms), 1, figsize=(14, 3 + 2.2 * len(zooms)), squeeze=False)
    ax = axes[0, 0]
    ax.plot(t, ref, "k-", lw=1.2, label="reference (10 s windows)")
    ax.plot(t, hr, "g.", ms=3, label="live hr")
    for s, e in recording.pulseless:
        ax.axvspan(s, e, color="k", alpha=0.15, lw=0)
    for s, e in recording.artefact:
        ax.axvspan(s, e, color="orange", alpha=0.25, lw=0)
    ax.set_title(f"{recording.name}: {recording.kind.upper()} {fs:g} Hz; grey: pulseless, orange: artefact")
    ax.set_ylabel("/min")
    ax.legend(loc="upper right", fontsize=8)
    design = stream_filter_design(recording.kind, fs)  # type: ignore[arg-type]
    cleaned = scipy.signal.sosfiltfilt(design["sos"], recording.signal)
    for ax, c in zip(axes[1:, 0], zooms, strict=True):
        a, b = max(int((c - 3) * fs), 0), min(int((c + 3) * fs), cleaned.size)
        seg = cleaned[a:b]
        ax.plot(np.arange(a, b) / fs, seg, lw=0.7)
        for beats, marker, y in ((recording.beats, "rv", seg.max()), (live, "g^", seg.min())):
            inside = beats[(beats >= a / fs) & (beats < b / fs)]
            ax.plot(inside, np.full(inside.size, y), marker, ms=5)
        ax.set_xlim(a / fs, b / fs)
        ax.set_ylabel("red: reference\ngreen: live", fontsize=7)
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{recording.name}.png"
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return path


if __name__ == "__main__":
    for name in sys.argv[1:] or list(RECORDINGS):
        print(plot(RECORDINGS[name]))
