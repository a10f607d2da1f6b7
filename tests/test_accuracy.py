"""Live heart rate on real recordings (ml/validation/data), streamed through the device frame protocol to
a running server and judged window by window against each recording's reference: the goals of issue 16
on a short excerpt of each (the whole recordings: ``python -m bench accuracy``)."""

from __future__ import annotations

import pytest

from ml.validation.metrics import meets_goals
from ml.validation.recordings import RECORDINGS
from tests.accuracy import judge_live
from tests.helpers import Api


@pytest.mark.parametrize("name", list(RECORDINGS))
async def test_live_rate_on_real_recording_meets_the_goals(api: Api, name: str) -> None:
    """>= 95 % of the clean windows within 5/min of the reference, a rate on >= 95 % of them, and no rate
    on any window whose last 3 s hold no pulse."""
    recording = RECORDINGS[name]
    start, end = recording.excerpt
    figures = await judge_live(api, recording, start, end)
    assert figures["clean_windows"] >= 8, figures  # enough windows to judge
    assert meets_goals(figures), figures


async def test_the_sensor_off_excerpt_holds_pulseless_windows(api: Api) -> None:
    """The detached-sensor recording's excerpt really is judged on windows with no pulse (so that
    ``rates_on_pulseless == 0`` above means something), and the same stream got rates once the pulse
    was back."""
    recording = RECORDINGS["ppg_sensor_off_heartpy"]
    figures = await judge_live(api, recording, *recording.excerpt)
    assert figures["pulseless_windows"] >= 8 and figures["rates_on_pulseless"] == 0, figures
    assert figures["coverage"] >= 0.95, figures
