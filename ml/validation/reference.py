"""Reference beats for the recordings that have no beat annotations: NeuroKit2's offline pipeline on the
whole recording (zero-phase cleaning, ``ecg_peaks(method="neurokit")`` / ``ppg_findpeaks(method="elgendi")``),
checked against a second detector (Hamilton 2002 for ECG, Charlton's MSPTDfast for PPG) and by eye
where they disagree (``docs/accuracy/*.png``, made by ``ml.validation.plots``). Beats inside a
recording's pulseless or artefact spans are not kept: those parts are not judged on rate.
"""

from __future__ import annotations

import warnings

import numpy as np

from ml.validation.recordings import DATA, RECORDINGS, Recording

# Corrections after checking by eye (docs/accuracy/<name>.png): reference beats (s) that are not beats.
NOT_BEATS: dict[str, tuple[float, ...]] = {
    # Small waves halfway through ordinary ~1.0 s intervals (61.83 -> 62.85, 63.88 -> 64.84).
    "ppg_sensor_off_heartpy": (62.31, 64.25),
}


def offline_beats(signal: np.ndarray, sampling_rate: float, kind: str, method: str | None = None) -> np.ndarray:
    """Beat indices by NeuroKit2 offline on the whole signal (``method``: NeuroKit2's detector name)."""
    import neurokit2 as nk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "ecg":
            cleaned = nk.ecg_clean(signal, sampling_rate=sampling_rate)
            _, info = nk.ecg_peaks(cleaned, sampling_rate=sampling_rate, method=method or "neurokit")
            return np.asarray(info["ECG_R_Peaks"], dtype=np.int64)
        cleaned = nk.ppg_clean(signal, sampling_rate=sampling_rate)
        method = method or "elgendi"
        # Charlton's detector sizes its windows with an integer rate; peak positions do not depend on it.
        rate = sampling_rate if method == "elgendi" else round(sampling_rate)
        return np.asarray(nk.ppg_findpeaks(cleaned, sampling_rate=rate, method=method)["PPG_Peaks"], dtype=np.int64)


def judged(recording: Recording, beats_s: np.ndarray) -> np.ndarray:
    """``beats_s`` without those inside the recording's pulseless or artefact spans."""
    keep = np.ones(beats_s.size, dtype=bool)
    for start, end in recording.pulseless + recording.artefact:
        keep &= (beats_s < start) | (beats_s > end)
    return beats_s[keep]


def disagreements(recording: Recording) -> dict[str, list[float]]:
    """Beats (s) that only the reference or only the second detector finds (> 50 ms ECG / 100 ms PPG
    from any beat of the other), outside the spans: the places to check by eye."""
    fs, kind = recording.sampling_rate, recording.kind
    ref = judged(recording, offline_beats(recording.signal, fs, kind) / fs)
    other = judged(recording, offline_beats(recording.signal, fs, kind,
                                            "hamilton2002" if kind == "ecg" else "charlton") / fs)
    tolerance = 0.05 if kind == "ecg" else 0.1
    if not ref.size or not other.size:
        return {"reference_only": ref.tolist(), "other_only": other.tolist()}
    return {"reference_only": [round(b, 2) for b in ref if np.abs(other - b).min() > tolerance],
            "other_only": [round(b, 2) for b in other if np.abs(ref - b).min() > tolerance]}


def write_references() -> None:
    for recording in RECORDINGS.values():
        fs = recording.sampling_rate
        beats = judged(recording, offline_beats(recording.signal, fs, recording.kind) / fs)
        for wrong in NOT_BEATS.get(recording.name, ()):
            beats = beats[np.abs(beats - wrong) > 0.05]
        np.savez_compressed(DATA / f"{recording.name}.npz", samples=recording.raw,
                            beats=np.rint(beats * fs).astype(np.int64))
        print(f"{recording.name}: {beats.size} reference beats")


if __name__ == "__main__":
    write_references()
