"""The streaming concern's transport: device stream events, live watching, and the history REST routes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from aiohttp import web
from pydantic import create_model

from devices.frames import Frame, StreamOpen
from server.care.access import require_patient
from server.core.documents import utcnow
from server.core.errors import ApiError, not_found
from server.core.identity import as_object_id
from server.core.params import parse_time
from server.core.wire import Items
from server.infra.ratelimit import HeavyReads
from server.streaming import history
from server.streaming.documents import Stream, StreamRef, SubscribeIn, UnsubscribeIn
from server.streaming.ingest import StreamService
from server.streaming.live import LiveHub
from server.streaming.wire import (
    Analyses,
    Closed,
    FrameAck,
    LiveAnalysis,
    LiveEnded,
    LiveFrame,
    LiveGap,
    LiveStream,
    Opened,
    StreamOut,
    Subscribed,
    Unsubscribed,
    Waveform,
)
from server.transport.events import DEVICE_ROLES, EventContext
from server.transport.mount import Mount

HEAVY_RANGE = timedelta(days=1)  # per-minute analyses over a longer range are a heavy read


WaveformQuery = create_model("WaveformQuery", **{"from": (str | None, None), "to": (str | None, None),
                                                 "max_points": (int | None, None)})
AnalysesQuery = create_model("AnalysesQuery", **{"from": (str | None, None), "to": (str | None, None),
                                                 "every": (Literal["second", "minute"], "minute"),
                                                 "stream_id": (str | None, None)})


def mount(m: Mount, streams: StreamService, live: LiveHub, heavy: HeavyReads) -> None:
    events, rest = m.events, m.rest
    events.push("live:frame", LiveFrame, "To a watcher (live:subscribe): a frame's samples at its display rate.")
    events.push("live:analysis", LiveAnalysis, "To a watcher: one analysed second (heart rate, HRV, quality).")
    events.push("live:gap", LiveGap, "To a watcher: frames of a stream went missing.")
    events.push("live:stream", LiveStream, "To a watcher: a stream of the patient opened or closed.")
    events.push("live:ended", LiveEnded, "To a watcher whose link to the patient was revoked: watching ended.")
    m.realtime.disconnect_hooks.append(live.on_disconnect)

    @events.event("stream:open", StreamOpen, roles=DEVICE_ROLES, reply=Opened)
    async def open_(ctx: EventContext, body: StreamOpen) -> dict[str, Any]:
        """(device) Open a stream of samples; errors `wrong_kind` (the device is paired as another kind),
        `invalid_payload`.

        An ECG device opens `kind: ecg`, a PPG device `kind: ppg` (a cuff or a medicine box cannot stream).
        `sampling_rate` is 25-1000 Hz. The answer gives the `stream_id` for the frames and `max_samples`, the most
        samples one frame may carry (2 s of signal). Open viewers of the patient get `live:stream`. Opening a
        `channel` the device already streams on ends that stream (`close_reason: replaced`: the device restarted);
        a device streams at most 4 channels at once (`too_many_streams`, 409)."""
        return await streams.open(ctx, body)

    @events.event("stream:frame", Frame, roles=DEVICE_ROLES, reply=FrameAck)
    async def frame(ctx: EventContext, body: Frame) -> dict[str, Any]:
        """(device) One frame of samples of an open stream.

        **Frame protocol.** `{stream_id, seq, t0, samples, dtype?}`: - `seq`: the frame's sequence number,
        increasing by one per frame (it may start anywhere). - `t0`: the device clock, in milliseconds, at the
        frame's first sample (any epoch, e.g. since boot). - `samples`, the efficient path: raw **little-endian**
        `float32` (default) or `int16` values (say which in `dtype`), sent as a Socket.IO **binary attachment**
        (e.g. a `Float32Array`'s buffer, or Python `bytes`). Or, simply, a JSON list of numbers (then no `dtype`).
        - Limits: at least one sample and at most 2 s of samples at the stream's rate (`max_samples` from
        `stream:open`; at most 2,000 in a JSON list); every value finite; the whole message at most 1 MB.

        A malformed frame gets the uniform error (`empty_frame`, `bad_samples`, `frame_too_long`,
        `non_finite_samples`, `invalid_payload`) and nothing of it is stored; `unknown_stream` (404) if the stream
        is not open (open another), `forbidden` for another device's stream. A frame whose `seq` skips ahead is
        accepted with `status: gap`: the missing frames are recorded in the stream's counters and in its stored
        waveform, and watchers get `live:gap`. A frame at or below the last accepted `seq` is dropped and counted:
        `duplicate` (already received) or `late` (given up as missing). A device that reconnects keeps sending on
        its stream with the next `seq`.

        The server maps the device clock to its own (the smallest observed `server - device` offset, at each
        frame's last sample) and records the drift in the stream record (`drift_ppm`). Analyses come back once per
        second of signal (`live:analysis`, with `hr: null` and a `reason` while there is no readable pulse); no
        frame for 5 s raises the `stalled` vital event."""
        return await streams.frame(ctx, body)

    @events.event("stream:close", StreamRef, roles=DEVICE_ROLES, reply=Closed)
    async def _close(ctx: EventContext, body: StreamRef) -> dict[str, Any]:
        """(device) Close a stream; the answer gives its final counters. A stream silent for 10 minutes is closed by
        the server."""
        return await streams.close(ctx, body.stream_id)

    @events.event("live:subscribe", SubscribeIn, reply=Subscribed)
    async def _subscribe(ctx: EventContext, body: SubscribeIn) -> dict[str, Any]:
        """(patient, linked caregiver or clinician) Watch a patient live; `forbidden` unless linked.

        From then on the socket receives `live:frame` (every open stream of the patient, decimated by block means
        to about `display_rate`, 10-1000 Hz, default 125), `live:analysis`, `live:gap` and `live:stream`. Access is
        checked now and again at every link change: when the link ends, frames stop at once and `live:ended` says
        so. Each watcher has its own bounded queue: a watcher that cannot keep up loses its oldest frames (the next
        frame's `dropped` says how many) and slows neither the device nor other watchers. Subscribing again
        replaces the subscription (e.g. to change the display rate)."""
        watcher = await live.subscribe(ctx, body)
        open_streams = await history.open_streams(as_object_id(watcher.patient_id, "patient_id"))
        return {"patient_id": watcher.patient_id, "display_rate": watcher.display_rate,
                "streams": [s.public() for s in open_streams]}

    @events.event("live:unsubscribe", UnsubscribeIn, reply=Unsubscribed)
    async def _unsubscribe(ctx: EventContext, body: UnsubscribeIn) -> dict[str, Any]:
        """Stop watching a patient (disconnecting does it too)."""
        pid = await require_patient(ctx.principal, body.patient_id, "live.unsubscribe", ctx.client)
        return {"unsubscribed": await live.unsubscribe(ctx.sid, str(pid))}

    async def list_streams(request: web.Request) -> web.Response:
        """The patient's device streams, newest first (at most 200), with their counters and clock figures

        `counters` holds `ok` (frames in order), `gap` (times frames were missed) and `missing_frames`, `duplicate`
        and `late` (frames dropped), `malformed` (frames refused), `analysis_dropped`. A stream open in the
        answering process shows its current counters; the stored record follows within a second. `drift_ppm` is how
        fast the device clock runs slow (+) or fast (-) against the server's; `clock_offset_ms` is server time
        minus device time."""
        pid = await require_patient(await rest.principal(request), request.match_info["patient_id"], "streams.list",
                                    rest.client(request))
        found = await history.recent_streams(pid)
        return web.json_response({"items": [streams.current(s).public() for s in found]})

    async def get_waveform(request: web.Request) -> web.Response:
        """Samples between ``from`` and ``to`` (default: the last minute); ``max_points`` downsamples them."""
        stream_id = request.match_info["stream_id"]
        pid = await require_patient(await rest.principal(request), request.match_info["patient_id"], "waveform.read",
                                    rest.client(request), stream_id=stream_id)
        stream = await Stream.get(as_object_id(stream_id, "stream_id"))
        if stream is None or stream.patient_id != pid:
            raise not_found("stream")
        end = parse_time(request.query.get("to"), "to", utcnow())
        start = parse_time(request.query.get("from"), "from", end - timedelta(minutes=1))
        try:
            max_points = int(request.query.get("max_points", history.MAX_POINTS))
        except ValueError:
            raise ApiError("invalid_query", "max_points must be a whole number", 422) from None
        return web.json_response(await history.waveform(stream, start, end, max_points))

    async def get_analyses(request: web.Request) -> web.Response:
        """Per-second analyses in a range, or per-minute aggregates (``?every=minute``, the default); over more
        than a day (up to 31), a heavy read: one at a time per user, a few a minute."""
        principal = await rest.principal(request)
        pid = await require_patient(principal, request.match_info["patient_id"], "analyses.read", rest.client(request))
        end = parse_time(request.query.get("to"), "to", utcnow())
        start = parse_time(request.query.get("from"), "from", end - timedelta(hours=1))
        stream_id = request.query.get("stream_id")

        async def read() -> web.Response:
            return web.json_response(await history.analyses(
                pid, start, end, request.query.get("every", "minute"),
                as_object_id(stream_id, "stream_id") if stream_id else None))

        if end - start <= HEAVY_RANGE:
            return await read()
        async with heavy.run(principal.user_id):
            return await read()

    path = "/api/patients/{patient_id}"
    m.route("GET", path + "/streams", list_streams, Items[StreamOut])
    m.route("GET", path + "/streams/{stream_id}/waveform", get_waveform, Waveform, query=WaveformQuery)
    m.route("GET", path + "/analyses", get_analyses, Analyses, query=AnalysesQuery)

