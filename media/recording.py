"""Recording a call: every participant's tracks into one Matroska file (Opus/VP8 received, written
as AAC/H.264 by aiortc's MediaRecorder). MediaRecorder takes its tracks before it starts, so the
recording starts once the expected tracks (each participant's audio, and video in a video call)
are in; a track arriving later (a clinician joining) is not recorded."""

from __future__ import annotations

import logging
from pathlib import Path

from aiortc import MediaStreamTrack
from aiortc.contrib.media import MediaRecorder

from server.infra.files import private_dir, private_file

log = logging.getLogger(__name__)


class CallRecording:
    def __init__(self, path: Path, expect: int) -> None:
        self.path = path
        self.expect = expect
        self.tracks: list[MediaStreamTrack] = []
        self.recorder: MediaRecorder | None = None
        self.stopped = False

    @property
    def started(self) -> bool:
        return self.recorder is not None

    async def add(self, track: MediaStreamTrack) -> None:
        if self.started or self.stopped:
            log.info("%s: a %s track arrived after the recording started; not recorded", self.path.name, track.kind)
            return
        self.tracks.append(track)
        if len(self.tracks) >= self.expect:
            private_dir(self.path.parent)  # a call's recording is the participants' alone
            self.recorder = MediaRecorder(str(private_file(self.path)), format="matroska")
            for t in self.tracks:
                self.recorder.addTrack(t)
            await self.recorder.start()

    async def stop(self) -> int:
        """Finish the file; its size in bytes (0 if it never started)."""
        self.stopped = True
        if self.recorder is None:
            return 0
        await self.recorder.stop()
        return self.path.stat().st_size if self.path.exists() else 0
