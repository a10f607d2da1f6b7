"""The validation set: real ECG / PPG recordings shipped by registry packages (see ``data/README.md``).

Each recording is stored in ``data/<name>.npz`` as the device's raw integers (``samples``) with the
reference beats (``beats``, sample indices) found offline on the whole recording. Spans are seconds:
``pulseless`` where no pulse can be seen (sensor off, flat line), ``artefact`` where a pulse may be
there but cannot be read (motion, handling). Windows touching neither are the clean windows the
live rate is judged on.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
Span = tuple[float, float]


@dataclass(frozen=True)
class Recording:
    name: str
    kind: str  # "ecg" | "ppg"
    sampling_rate: float
    units: str
    scale: float  # physical value = (raw - offset) * scale
    offset: float
    source: str
    licence: str
    about: str
    excerpt: Span  # the part ``make test`` streams (seconds)
    pulseless: tuple[Span, ...] = ()
    artefact: tuple[Span, ...] = ()
    reference: str = "NeuroKit2 offline"

    @property
    def raw(self) -> np.ndarray:
        return _arrays(self.name)["samples"]

    @property
    def signal(self) -> np.ndarray:
        """The samples in ``units`` (float64), as the device sends them."""
        return (self.raw.astype(np.float64) - self.offset) * self.scale

    @property
    def beats(self) -> np.ndarray:
        """Reference beat times (s)."""
        return _arrays(self.name)["beats"] / self.sampling_rate

    @property
    def seconds(self) -> float:
        return self.raw.size / self.sampling_rate


@cache
def _arrays(name: str) -> dict[str, np.ndarray]:
    with np.load(DATA / f"{name}.npz") as f:
        return {key: f[key] for key in f.files}


PLUX_ECG_MV = 3000.0 / 1019 / 2**16  # biosignalsplux ECG: (ADC / 2^16 - 0.5) * VCC / G, VCC 3 V, G 1019
BITALINO_ECG_MV = 3300.0 / 1100 / 2**10  # BITalino ECG: (ADC / 2^10 - 0.5) * VCC / G, VCC 3.3 V, G 1100
HEARTPY = ("heartpy 1.2.7 wheel (PyPI), heartpy/data/", "MIT (the LICENSE file in the wheel; its metadata "
           "still names GPL-3.0)")
PLUX = ("biosignalsnotebooks 0.6.14 wheel (PyPI), biosignalsnotebooks/notebook_files/osf_files/signal_samples/",
        "MIT (opensignalstool developers and PLUX Wireless Biosignals)")

RECORDINGS: dict[str, Recording] = {r.name: r for r in (
    Recording("ppg_rest_plux", "ppg", 1000.0, "adc", 1.0, 0.0, PLUX[0] + "bvp_rest.h5", PLUX[1],
              "Clean finger PPG at rest, biosignalsplux BVP sensor, 16 bit, 105.8 s.", (0.0, 60.0)),
    Recording("ppg_finger_heartpy", "ppg", 100.0, "adc", 1.0, 0.0, HEARTPY[0] + "data.csv", HEARTPY[1],
              "Clean finger PPG, 10-bit ADC, 24.8 s (HeartPy's first example).", (0.0, 24.8)),
    Recording("ppg_sensor_off_heartpy", "ppg", 1000.0 / 8.5479032, "adc", 1.0, 0.0, HEARTPY[0] + "data2.csv",
              HEARTPY[1], "Finger PPG, 10-bit ADC, 128 s: sensor off the finger (ambient noise, 0-14 s), handled "
              "(14-18 s), unplugged (a flat 0, 18-25 s), put back on (25-42 s), then a pulse.", (0.0, 90.0),
              pulseless=((0.0, 4.2), (7.2, 14.3), (18.0, 25.0)),
              artefact=((4.2, 7.2), (14.3, 18.0), (25.0, 42.0), (77.9, 80.0), (102.3, 104.3))),
    Recording("ppg_motion_heartpy", "ppg", 100.3765, "adc", 1.0, 0.0, HEARTPY[0] + "data3.csv", HEARTPY[1],
              "Finger PPG, 10-bit ADC clipping at both rails, 682 s, with movement (timestamps on a 15 ms "
              "clock; sampled at a steady 100.38 Hz by a fit of all of them).", (140.0, 200.0),
              artefact=((9.5, 11.0), (154.8, 156.5), (164.5, 167.0), (168.9, 171.5), (226.4, 229.0),
                        (233.9, 236.0), (240.3, 242.5), (311.3, 318.0), (333.2, 335.0), (387.4, 392.0),
                        (498.4, 503.0), (596.5, 603.0), (676.8, 681.9))),
    Recording("ecg_rest_plux", "ecg", 1000.0, "mV", PLUX_ECG_MV, 2**15, PLUX[0] + "ecg_5_min.h5", PLUX[1],
              "Clean ECG at rest, biosignalsplux ECG sensor (chest), 16 bit, 300 s.", (0.0, 60.0)),
    Recording("ecg_pvc_mitdb208", "ecg", 360.0, "mV", 1 / 200, 1024.0, "scipy 1.11.4 wheel (PyPI), scipy/misc/ecg.dat "
              "= MIT-BIH Arrhythmia Database record 208, lead MLII, 19:35-24:35", "ODC-By 1.0 (PhysioNet); "
              "scipy's copy under BSD-3-Clause", "ECG with frequent PVCs, couplets and fusion beats, 11-bit, "
              "300 s, baseline wander and noise; the amplifier saturates and recovers at 209-214 s.", (140.0, 200.0),
              pulseless=((209.6, 213.5),), artefact=((41.8, 43.6), (96.4, 98.9), (209.2, 209.6), (213.5, 214.0))),
    Recording("ecg_wearable_plux", "ecg", 1000.0, "mV", PLUX_ECG_MV, 2**15, PLUX[0] +
              "signal_sample_single_hub_ECG_2018_7_5.h5", PLUX[1],
              "Wearable ECG, biosignalsplux hub, 1000 Hz, 16 bit, 417 s.", (0.0, 60.0)),
    Recording("ecg_wearable_bitalino", "ecg", 1000.0, "mV", BITALINO_ECG_MV, 512.0,
              "pyhrv 0.5.0 wheel (PyPI), pyhrv/files/SampleECG.txt", "BSD-3-Clause (pyhrv, Pedro Gomes)",
              "Wearable ECG, BITalino board, 1000 Hz, 10 bit, 22.3 s, one movement (19.0-20.2 s).", (0.0, 22.3),
              artefact=((18.9, 20.3),)),
)}
