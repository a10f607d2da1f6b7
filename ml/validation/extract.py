"""Re-create ``data/*.npz`` from the registry packages that ship the recordings (see ``data/README.md``).

    python -m ml.validation.extract            # pip download --no-deps into a temp dir, extract, write
    python -m ml.validation.extract --reference  # then recompute the NeuroKit2 reference beats

The PLUX recordings are HDF5 files: reading them needs ``h5py`` (``pip install h5py``; not a project
dependency, only this one-off extraction uses it). Samples are stored as the device's raw integers
(ADC counts) with the factor to physical units in ``recordings.RECORDINGS``; reference beats are
written by ``reference.write_references`` into the same file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ml.validation.recordings import DATA, RECORDINGS

PLUX = "biosignalsnotebooks/notebook_files/osf_files/signal_samples/"
PACKAGES = {"scipy": "scipy==1.11.4", "heartpy": "heartpy==1.2.7", "pyhrv": "pyhrv==0.5.0",
            "biosignalsnotebooks": "biosignalsnotebooks==0.6.14"}


def _wheel(folder: Path, spec: str) -> zipfile.ZipFile:
    name = spec.split("==")[0]
    args = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), spec]
    if name == "scipy":  # the last scipy wheels with scipy/misc/ecg.dat are binary: pick the one for CPython 3.11
        args += ["--only-binary", ":all:", "--python-version", "3.11", "--platform", "manylinux2014_x86_64"]
    subprocess.run(args, check=True)
    return zipfile.ZipFile(next(folder.glob(f"{name}-*.whl")))


def _plux(wheel: zipfile.ZipFile, member: str, folder: Path) -> np.ndarray:
    import h5py  # only for this extraction

    path = Path(wheel.extract(PLUX + member, folder))
    with h5py.File(path) as f:
        device = f[next(iter(f.keys()))]["raw"]
        channel = next(k for k in device if k.startswith("channel"))
        return np.asarray(device[channel][:, 0])


def extract(folder: Path) -> dict[str, np.ndarray]:
    wheels = {name: _wheel(folder / name, spec) for name, spec in PACKAGES.items()}
    with wheels["scipy"].open("scipy/misc/ecg.dat") as f:
        mitdb = np.load(f)["ecg"]
    heartpy = {n: wheels["heartpy"].read(f"heartpy/data/{n}").decode().splitlines()
               for n in ("data.csv", "data2.csv", "data3.csv")}
    bitalino = np.loadtxt(wheels["pyhrv"].open("pyhrv/files/SampleECG.txt"), dtype=np.int64)[:, -1]
    plux = wheels["biosignalsnotebooks"]
    return {
        "ecg_pvc_mitdb208": mitdb.astype(np.uint16),
        "ppg_finger_heartpy": np.array([int(v) for v in heartpy["data.csv"]], dtype=np.int16),
        "ppg_sensor_off_heartpy": np.array([int(r.split(",")[1]) for r in heartpy["data2.csv"][1:]], dtype=np.int16),
        "ppg_motion_heartpy": np.array([int(r.split(",")[1]) for r in heartpy["data3.csv"][1:]], dtype=np.int16),
        "ecg_wearable_bitalino": bitalino.astype(np.int16),
        "ecg_rest_plux": _plux(plux, "ecg_5_min.h5", folder).astype(np.uint16),
        "ecg_wearable_plux": _plux(plux, "signal_sample_single_hub_ECG_2018_7_5.h5", folder).astype(np.uint16),
        "ppg_rest_plux": _plux(plux, "bvp_rest.h5", folder).astype(np.uint16),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="recompute the reference beats afterwards")
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, samples in extract(Path(tmp)).items():
            assert name in RECORDINGS, name
            np.savez_compressed(DATA / f"{name}.npz", samples=samples)
            print(f"{name}: {samples.size} samples")
    if args.reference:
        from ml.validation.reference import write_references

        write_references()


if __name__ == "__main__":
    main()
