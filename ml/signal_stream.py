"""Streaming NeuroKit2-style analysis of live ECG / PPG.

Re-running ``nk.ecg_process`` on the last 10 s every second costs tens of milliseconds per stream
and second, almost all of it spent re-filtering and re-detecting signal that was already analysed.
Here each sample is filtered once (causal IIR with carried state), peaks are searched only in the
newly finalised part of a short rolling buffer, and the per-second figures are computed from a
bounded history of beat times. The algorithms are NeuroKit2's defaults, adapted to streaming:

* cleaning: the filters of ``nk.ecg_clean(method="neurokit")`` (0.5 Hz high-pass Butterworth,
  order 5, then the 50 Hz moving-average "powerline" filter) and ``nk.ppg_clean(method="elgendi")``
  (0.5-8 Hz band-pass Butterworth, order 2 as in NeuroKit2 0.2.x), applied forward only
  (``sosfilt`` instead of ``sosfiltfilt``/``filtfilt``). Causal filtering delays the waveform by a
  few samples but leaves beat-to-beat intervals, hence rate and HRV, unchanged;
* peaks: ports of ``_ecg_findpeaks_neurokit`` (gradient threshold QRS detector) and
  ``_ppg_findpeaks_elgendi`` (two moving averages), run on ~2.5 s windows;
* quality: template matching of the recent beats, as NeuroKit2's ``ppg_quality("templatematch")``
  and (in spirit) ``ecg_quality("averageQRS")``, plus flat-line / saturation / amplitude checks.

Beyond NeuroKit2, for live use on real recordings (validated in ``ml.validation``):

* no number without a pulse: each second's ``reason`` is ``no_signal`` (flat, clipped, only ADC noise,
  nothing in the cardiac band, no beat for a while) or ``poor_signal`` (beats that do not look like
  each other); then ``hr`` and HRV are ``None``, and once the pulse was lost no earlier beat counts;
* every beat counts in ``hr`` (ectopic ones too, as a monitor counts them), extra detections (T waves,
  dicrotic waves) do not; ectopic beats are reported as ``ectopic_per_min`` and left out of HRV,
  which is computed on NN intervals only.

Public functions take arrays and a sampling rate and return plain data; ``StreamAnalyser`` only holds
the per-stream state (bounded ring buffers) and composes them.
"""

from __future__ import annotations

import math
from collections import deque
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import scipy.signal

from ml.rr_intervals import rr_beat_counts, rr_classify, rr_hrv, rr_rate, rr_valid
from ml.signal_quality import beats_template_quality, secondary_wave, signal_plausibility
from ml.stream_peaks import ECG_PEAKS, PPG_PEAKS, ecg_findpeaks_window, ppg_findpeaks_window

__all__ = ["ECG_PEAKS", "PPG_PEAKS", "StreamAnalyser", "beats_template_quality", "ecg_findpeaks_window",
           "ppg_findpeaks_window", "rr_beat_counts", "rr_hrv", "rr_rate", "rr_valid", "signal_plausibility",
           "stream_clean", "stream_filter_design"]

Kind = Literal["ecg", "ppg"]

try:  # scipy's compiled SOS kernel; the public wrapper spends ~50 us per call validating arguments.
    from scipy.signal._sosfilt import _sosfilt as _sosfilt_kernel
except ImportError:  # pragma: no cover - other scipy layouts fall back to the public function
    _sosfilt_kernel = None


def _sosfilt(sos: np.ndarray, x: np.ndarray, zi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``scipy.signal.sosfilt(sos, x, zi=zi)`` for 1-D float64 ``x``, without the argument checks."""
    if _sosfilt_kernel is None:
        return scipy.signal.sosfilt(sos, x, zi=zi)
    y = np.array(x, dtype=np.float64, order="C", ndmin=2)
    state = np.array(zi, dtype=np.float64, order="C", ndmin=3)
    _sosfilt_kernel(sos, y, state)
    return y[0], state[0]


# =============================================================================
# Cleaning
# =============================================================================
@lru_cache(maxsize=64)
def stream_filter_design(kind: Kind, sampling_rate: float) -> dict[str, Any]:
    """Design (once per kind and rate) NeuroKit2's cleaning filters for causal streaming use.

    Returns ``nk_sos`` (the Butterworth stage exactly as NeuroKit2 designs it), ``powerline`` (the
    moving-average taps of NeuroKit2's powerline filter, ECG only, else ``None``), ``sos`` (both
    cascaded as one SOS array, what ``stream_clean`` runs) and ``zi`` (the unit-step steady state of
    ``sos``, scaled by the first sample to start without a transient). The result is cached and
    shared between streams: do not modify it.
    """
    fs = float(sampling_rate)
    if kind == "ecg":
        if fs < 50:
            raise ValueError(f"ECG needs a sampling rate of at least 50 Hz, got {fs}")
        nk_sos = scipy.signal.butter(5, 0.5, btype="highpass", output="sos", fs=fs)
        # NeuroKit2: b = ones(int(fs / 50)) if fs >= 100 else ones(2); a = [len(b)].
        taps = np.ones(int(fs / 50) if fs >= 100 else 2)
        powerline: np.ndarray | None = taps / taps.size
        sos = np.vstack([nk_sos, scipy.signal.tf2sos(powerline, [1.0])]) if taps.size > 1 else nk_sos
    elif kind == "ppg":
        if fs <= 16:
            raise ValueError(f"PPG needs a sampling rate above 16 Hz (8 Hz high cut), got {fs}")
        nk_sos = scipy.signal.butter(2, [0.5, 8.0], btype="bandpass", output="sos", fs=fs)
        powerline = None
        sos = nk_sos
    else:
        raise ValueError(f"kind must be 'ecg' or 'ppg', got {kind!r}")
    return {"nk_sos": nk_sos, "powerline": powerline, "sos": np.ascontiguousarray(sos),
            "zi": scipy.signal.sosfilt_zi(sos)}


def stream_clean(samples: np.ndarray, sos: np.ndarray, zi: np.ndarray | None = None,
                 zi_unit: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Causal version of NeuroKit2's cleaning: filter one frame, carrying the filter state.

    ``zi`` is the state returned for the previous frame; ``None`` starts (or restarts, after a gap)
    in the steady state for the first sample (``zi_unit * x[0]``), so a DC offset does not ring.
    Returns ``(cleaned, zi)``.
    """
    x = np.asarray(samples, dtype=float)
    if zi is None:
        unit = scipy.signal.sosfilt_zi(sos) if zi_unit is None else zi_unit
        zi = unit * x[0]
    return _sosfilt(sos, x, zi)


# =============================================================================
# Per-stream state
# =============================================================================
class StreamAnalyser:
    """Per-stream state: feed frames with ``push``, get one analysis per whole second of signal.

    Memory is bounded: two ``buffer_s`` ring buffers (raw and cleaned) and deques of beat times,
    whatever the stream's length. Analyses lag the signal by up to ~1.5 s for beats (a peak is only
    final once the detector's centred windows are complete), by nothing for quality checks.
    """

    def __init__(self, kind: Kind = "ecg", sampling_rate: float = 250.0, window_s: float = 10.0,
                 hrv_window_s: float = 60.0, buffer_s: float = 8.0, quality_window_s: float = 6.0,
                 min_quality: float = 0.5, min_intervals: int = 4) -> None:
        if kind not in ("ecg", "ppg"):
            raise ValueError(f"kind must be 'ecg' or 'ppg', got {kind!r}")
        self.kind: Kind = kind
        self.sampling_rate = fs = float(sampling_rate)
        self.window_s = float(window_s)
        self.hrv_window_s = max(float(hrv_window_s), self.window_s)
        self.quality_window_s = float(quality_window_s)
        self.min_quality = float(min_quality)
        self.min_intervals = int(min_intervals)  # ordinary intervals since the pulse became readable, for a rate
        design = stream_filter_design(kind, fs)
        self._sos, self._zi_unit = design["sos"], design["zi"]
        self._zi: np.ndarray | None = None
        # ECG: ectopic beats (another QRS shape) are matched with their own kind; a PPG pulse has one shape.
        self._neighbours = 1 / 3 if kind == "ecg" else None
        self._max_missed = 0 if kind == "ecg" else 2
        if kind == "ecg":
            self._find = ecg_findpeaks_window
            half = (ECG_PEAKS["smoothwindow"] + ECG_PEAKS["avgwindow"]) / 2
        else:
            self._find = ppg_findpeaks_window
            half = (PPG_PEAKS["peakwindow"] + PPG_PEAKS["beatwindow"]) / 2
        self._mindelay = int(np.rint(0.3 * fs))
        # Peaks before now - guard are final: the detector's centred windows reach ``half`` past a
        # sample, and a QRS / pulse region ends < 0.1 s after its peak.
        self._guard = math.ceil((half + 0.1) * fs)
        self.lag_s = self._guard / fs  # beats reach the analyses this late; the rate window ends here
        self._context = round(1.0 * fs)  # detector context before the newly searched part
        self._tolerance = round(0.1 * fs)  # a peak may shift a little between windows
        capacity = math.ceil(max(buffer_s, quality_window_s + 2.0, 4.0) * fs)
        self._raw = np.zeros(capacity)
        self._clean = np.zeros(capacity)
        self._n = 0  # samples since the stream started, gaps included (absolute index of the next one)
        self._valid_from = 0  # first sample after the last discontinuity
        self._searched_to = 0  # peaks before this absolute index are final
        self._good_from = 0  # first sample after the pulse was last lost
        self._poor = False  # the previous second held no readable pulse
        self._last_peak: int | None = None
        self._tick = 1
        self._next_tick = round(fs)
        beats = math.ceil(self.hrv_window_s * 240 / 60) + 8  # >= hrv_window_s at up to 240 /min
        self._peaks: deque[int] = deque(maxlen=beats)
        self._rr: deque[float] = deque(maxlen=beats)  # samples; NaN after a discontinuity
        self._ptp: deque[float] = deque(maxlen=30)  # per-second cleaned peak-to-peak, for the reference
        self._heights: deque[float] = deque(maxlen=5)  # PPG: cleaned height of the latest pulses
        self._gaps: deque[tuple[int, int]] = deque(maxlen=16)
        self._origin_ms: float | None = None

    # ------------------------------------------------------------------ feeding
    def push(self, samples: np.ndarray, t0_ms: float | None = None) -> list[dict[str, Any]]:
        """Add a frame; return the analyses completed by it (one per whole second of signal).

        ``t0_ms`` (device time of the frame's first sample), when given, detects lost frames (a gap
        is recorded, see ``gap``) and repeated ones (the overlapping samples are dropped). Non-finite
        samples are treated as a gap.
        """
        x = np.asarray(samples, dtype=float).ravel()
        if x.size == 0:
            return []
        if t0_ms is not None:
            x = self._align(x, float(t0_ms))
            if x.size == 0:
                return []
        finite = np.isfinite(x)
        if not finite.all():
            out: list[dict[str, Any]] = []
            start = 0
            for bad, run in _runs(finite):
                if bad:
                    self.gap(run)
                else:
                    out.extend(self._feed(x[start:start + run]))
                start += run
            return out
        return self._feed(x)

    def gap(self, n_samples: int) -> None:
        """Record ``n_samples`` of missing signal. Time keeps running (analyses resume at the right
        ``t``), the filters restart on the next sample, no RR interval spans the gap, and seconds that
        fall entirely in the gap get no analysis."""
        n = int(n_samples)
        if n <= 0:
            return
        m = min(n, self._raw.size)
        for buf in (self._raw, self._clean):
            buf[:-m] = buf[m:]
            buf[-m:] = 0.0
        self._gaps.append((self._n, self._n + n))
        self._n += n
        self._valid_from = self._searched_to = self._n
        self._zi = None
        while self._next_tick <= self._n:
            self._tick += 1
            self._next_tick = round(self._tick * self.sampling_rate)

    def _align(self, x: np.ndarray, t0_ms: float) -> np.ndarray:
        fs = self.sampling_rate
        if self._origin_ms is None:
            self._origin_ms = t0_ms - self._n * 1000.0 / fs
            return x
        offset = (t0_ms - self._origin_ms) * fs / 1000.0 - self._n  # samples ahead of expectation
        slack = max(3.0, 0.04 * fs)
        if offset > slack:
            self.gap(round(offset))
        elif offset < -slack:
            x = x[round(-offset):]
        return x

    def _feed(self, x: np.ndarray) -> list[dict[str, Any]]:
        if self._zi is None:
            self._zi = self._zi_unit * x[0]
        y, self._zi = _sosfilt(self._sos, x, self._zi)
        out = []
        pos = 0
        while pos < x.size:
            take = min(x.size - pos, self._next_tick - self._n)
            self._append(x[pos:pos + take], y[pos:pos + take])
            pos += take
            if self._n == self._next_tick:
                out.append(self._analyse())
                self._tick += 1
                self._next_tick = round(self._tick * self.sampling_rate)
        return out

    def _append(self, raw: np.ndarray, clean: np.ndarray) -> None:
        n = raw.size
        cap = self._raw.size
        if n >= cap:
            self._raw[:] = raw[-cap:]
            self._clean[:] = clean[-cap:]
        else:
            self._raw[:-n] = self._raw[n:]
            self._raw[-n:] = raw
            self._clean[:-n] = self._clean[n:]
            self._clean[-n:] = clean
        self._n += n

    # ------------------------------------------------------------------ analysis
    def _detect(self) -> list[int]:
        """Search the newly final part of the buffer for peaks; record them; return the new ones."""
        n, cap = self._n, self._clean.size
        final_to = n - self._guard
        if final_to <= self._searched_to:
            return []
        start = max(self._searched_to - self._context, self._valid_from, n - cap)
        window = self._clean[cap - (n - start):]
        lo = max(self._searched_to - self._tolerance, start) - start
        last = None if self._last_peak is None else self._last_peak - start
        rel = self._find(window, self.sampling_rate, last_peak=last, from_index=lo)
        rel = rel[(rel >= lo) & (rel < final_to - start)]
        self._searched_to = final_to
        new = []
        for p in (rel + start).tolist():
            last_peak = self._last_peak
            if last_peak is not None and p - last_peak <= self._mindelay:
                continue
            contiguous = last_peak is not None and last_peak >= self._valid_from
            if self.kind == "ppg":
                height = float(window[p - start])
                recent = [v for v in list(self._rr)[-5:] if not math.isnan(v)]
                if contiguous and secondary_wave(height, p - last_peak, self._heights, recent):
                    continue
                self._heights.append(height)
            self._peaks.append(p)
            self._rr.append(float(p - last_peak) if contiguous else math.nan)
            self._last_peak = p
            new.append(p)
        return new

    def _signal_seconds(self, since: int) -> float:
        """Seconds of real signal (not gap, not before the start) between ``since`` and now."""
        since = max(since, 0)
        missing = sum(max(0, min(e, self._n) - max(s, since)) for s, e in self._gaps)
        return (self._n - since - missing) / self.sampling_rate

    def _quality(self, peaks: np.ndarray, beats: np.ndarray) -> tuple[float, str | None]:
        """Quality of the latest second and why it holds no readable pulse, if it does not:
        ``no_signal`` (quality 0) if the latest samples are flat or clipped (``signal_plausibility``) or
        no beat was found for longer than 1.6 median RR (min 1.5 s: a lost pulse, or heavy noise that
        raises the detector's threshold above every QRS); ``poor_signal`` if their amplitude jumped
        (quality 0) or ``beats_template_quality`` of the last ``quality_window_s`` is below
        ``min_quality``. ``peaks``: every detection; ``beats``: those judged as beats (not the extra
        detections, nor the newest if it came early, which only the next beat tells apart)."""
        fs, n, cap = self.sampling_rate, self._n, self._raw.size
        recent = round(2.0 * fs)
        first = max(n - recent, self._valid_from, n - cap)
        if n - first < int(0.25 * fs):
            return 0.0, "no_signal"
        reference = sorted(self._ptp)[len(self._ptp) // 2] if len(self._ptp) >= 5 else None
        check = signal_plausibility(self._raw[cap - (n - max(first, n - round(fs))):],
                                    self._clean[cap - (n - first):], reference)
        if check["reason"] in (None, "amplitude"):
            self._ptp.append(check["ptp"])
        if not check["ok"]:
            return 0.0, "poor_signal" if check["reason"] == "amplitude" else "no_signal"
        tail = np.diff(peaks[-6:])
        allowed = max(1.5 * fs, 1.6 * float(np.median(tail))) if tail.size else 2.0 * fs
        if self._searched_to - self._valid_from > allowed and (
                not peaks.size or peaks[-1] < self._searched_to - allowed):
            return 0.0, "no_signal"
        # Beats of the last quality_window_s whose segment holds no gap.
        buf_start = n - cap
        peaks = beats[beats >= max(n - int(self.quality_window_s * fs), buf_start + int(0.3 * fs))]
        for g0, g1 in self._gaps:
            if g1 > buf_start:
                peaks = peaks[(peaks + int(0.45 * fs) <= g0) | (peaks - int(0.3 * fs) >= g1)]
        # Too few beats to judge: the stream has just started (or resumed after a gap), or the pulse is lost.
        # Judging 2 beats by each other is only good enough at the start.
        young = n - self._valid_from < self.quality_window_s * fs
        if peaks.size < (2 if young else 3):
            return 0.0, None if young else "poor_signal"
        recent_from = n - int(1.6 * fs)
        quality = beats_template_quality(self._clean, peaks - buf_start, fs, recent_from=recent_from - buf_start,
                                         neighbours=self._neighbours)
        return quality, "poor_signal" if quality < self.min_quality else None

    def _analyse(self) -> dict[str, Any]:
        fs, n = self.sampling_rate, self._n
        new = self._detect()
        peaks = np.fromiter(self._peaks, dtype=np.int64, count=len(self._peaks))
        rr = np.fromiter(self._rr, dtype=float, count=len(self._rr))
        in_hrv = peaks >= n - self.hrv_window_s * fs
        rr_s = rr[in_hrv] / fs
        classes = rr_classify(rr_s, max_missed=self._max_missed)
        extra = classes["extra"].copy()  # not beats: neither judged for quality nor counted
        recent = sorted(v for v in rr_s[-6:-1].tolist() if not math.isnan(v))
        if recent and rr_s[-1] < 0.8 * recent[len(recent) // 2]:
            extra[-1] = True  # early: an extra detection or an ectopic beat, told apart by the next beat
        quality, reason = self._quality(peaks, np.concatenate((peaks[:peaks.size - extra.size], peaks[in_hrv][~extra])))
        # Once the pulse is lost (no signal, or two poor seconds running: one is a passing disturbance), no
        # beat from before counts towards a rate or HRV when it is back.
        forget = self._last_peak is not None and self._last_peak >= self._good_from  # beats since the last loss
        if forget and (reason == "no_signal" or (reason is not None and self._poor)):
            self._good_from = n
        self._poor = reason is not None
        starts = peaks[in_hrv] - rr[in_hrv]  # NaN for a beat with no interval (then nowhere "inside")
        usable = starts >= self._good_from
        counts = classes["counts"] * usable
        ectopic = classes["ectopic"] & usable
        # The rate window is the last window_s of *final* signal (beats are final up to _searched_to,
        # ~0.6 s behind n), holding only intervals that start and end inside it: an interval that
        # straddles the window's start would weigh a beat from outside it (biasing irregular rhythms).
        in_window = starts >= self._searched_to - self.window_s * fs
        rate = hrv = ectopic_per_min = None
        if reason is None:
            rate = rr_rate(rr_s, counts * in_window, min_intervals=self.min_intervals)
            hrv = rr_hrv(rr_s, classes["normal"] & usable)
            covered = float(rr_s[counts > 0].sum())
            if covered >= self.window_s:
                ectopic_per_min = round(60.0 * int(np.count_nonzero(ectopic)) / covered, 1)
        k = len(new)
        new_rr = rr[rr.size - k:] / fs if k else rr[:0]
        return {
            "t": n / fs,
            "hr": rate,
            "hrv": hrv or {"rmssd": None, "sdnn": None},
            "reason": reason,
            "ectopic_per_min": ectopic_per_min,
            "quality": round(quality, 3),
            "beats": k,
            "window": round(self._signal_seconds(max(n - round(self.window_s * fs), self._good_from)), 3),
            "beats_t": [p / fs for p in new],
            "rr": [None if math.isnan(v) else float(v) for v in new_rr.tolist()],
        }

    # ------------------------------------------------------------------ introspection
    def rr_intervals(self, window_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(beat_times_s, rr_s)`` of the beats in the last ``window_s`` (default: the HRV window);
        ``rr_s`` is NaN for the first beat after a discontinuity."""
        window = self.hrv_window_s if window_s is None else window_s
        peaks = np.fromiter(self._peaks, dtype=np.int64, count=len(self._peaks))
        rr = np.fromiter(self._rr, dtype=float, count=len(self._rr))
        keep = peaks >= self._n - window * self.sampling_rate
        return peaks[keep] / self.sampling_rate, rr[keep] / self.sampling_rate

    def buffer_sizes(self) -> dict[str, int]:
        """Sizes of every per-stream buffer (all bounded; for tests and memory accounting)."""
        return {"raw": self._raw.size, "clean": self._clean.size, "peaks": len(self._peaks),
                "peaks_max": self._peaks.maxlen or 0, "rr": len(self._rr), "ptp": len(self._ptp),
                "gaps": len(self._gaps)}

    def nbytes(self) -> int:
        """Approximate memory held by this analyser's buffers, in bytes."""
        return int(self._raw.nbytes + self._clean.nbytes + 8 * (2 * (self._peaks.maxlen or 0) + 30 + 32)
                   + (self._zi.nbytes if self._zi is not None else 0))


def _runs(mask: np.ndarray) -> list[tuple[bool, int]]:
    """``(is_false, length)`` for each run of equal values in ``mask``."""
    change = np.flatnonzero(np.diff(mask.view(np.int8))) + 1
    bounds = np.concatenate(([0], change, [mask.size]))
    return [(not bool(mask[a]), int(b - a)) for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)]
