"""Helpers for the live-waveform tests: paired devices streaming over real sockets, and watchers."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from tests.helpers import Api, Sock, User, connect

_serials = itertools.count(1)


async def pair(api: Api, patient: User, kind: str = "ecg", serial: str | None = None) -> dict[str, Any]:
    status, body = await api.request("POST", f"/api/patients/{patient.id}/devices", patient,
                                     json={"kind": kind, "serial": serial or f"{kind.upper()}-{next(_serials)}",
                                           "model": "Test patch"})
    assert status == 201, body
    return body


async def device_socket(api: Api, credential: str) -> Sock:
    sock = await connect(api.base_url, None, auth={"device_token": credential})
    api.sockets.append(sock)
    return sock


async def open_stream(dev: Sock, kind: str = "ecg", rate: float = 250.0) -> str:
    data = await dev.ok("stream:open", {"kind": kind, "sampling_rate": rate, "units": "mV"})
    return data["stream_id"]


def frame(stream_id: str, seq: int, samples: np.ndarray, rate: float, t0_base: float = 1_000_000.0,
          binary: bool = True, first_seq: int = 0) -> dict[str, Any]:
    """A frame whose device clock runs in step with ``seq`` (frames of ``samples.size``)."""
    t0 = t0_base + (seq - first_seq) * samples.size * 1000.0 / rate
    body: dict[str, Any] = {"stream_id": stream_id, "seq": seq, "t0": t0}
    if binary:
        body.update(dtype="float32", samples=samples.astype("<f4").tobytes())
    else:
        body["samples"] = [float(v) for v in samples]
    return body


def ecg(seconds: float, rate: float = 250.0, hr: float = 72.0, seed: int = 1) -> np.ndarray:
    import neurokit2 as nk

    return np.asarray(nk.ecg_simulate(duration=int(np.ceil(seconds)), sampling_rate=int(rate), heart_rate=hr,
                                      noise=0.01, random_state=seed))[: int(seconds * rate)]
