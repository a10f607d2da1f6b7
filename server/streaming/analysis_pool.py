"""Runs the streaming analysis (``ml``) in worker processes, off the event loop.

Analysis is CPU work; on the event loop it would delay connects, acks and watcher frames.
Each stream is pinned to one worker (its analyser is stateful). A sender thread per worker
batches whatever ops are queued into one pipe message, and a receiver thread hands results
back to the loop, so neither side blocks the loop on the pipe. A worker that dies is
restarted and its streams re-opened (their analysis restarts, as after a gap).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import queue
import signal
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
# Per worker: about 5 s of 500 streams' frames (~10 MB of float32 samples); past it new samples are dropped.
MAX_QUEUED_OPS = 10_000
BATCH = 2_000
RESTART_DELAY_S = 1.0

Op = tuple[Any, ...]
# (stream_id, [analysis...], [event...], receive time of the newest samples in that push)
Result = tuple[str, list[dict[str, Any]], list[dict[str, Any]], float]


def _worker(inbox: Any, outbox: Any) -> None:
    """Worker process: owns the analysers of its streams. It ignores SIGINT/SIGTERM (a Ctrl-C reaches the
    whole process group): the server stops it, and if the server dies the pipe closes and it exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from ml.rhythm_events import EventDetector, Thresholds
    from ml.signal_stream import StreamAnalyser

    sessions: dict[str, tuple[StreamAnalyser, EventDetector]] = {}
    while True:
        try:
            ops = inbox.recv()
        except EOFError:
            return
        if ops is None:
            return
        results: list[Result] = []
        for op in ops:
            name, stream_id = op[0], op[1]
            try:
                if name == "open":
                    _, _, kind, rate, thresholds = op
                    sessions[stream_id] = (StreamAnalyser(kind, rate), EventDetector(Thresholds(**thresholds)))
                elif name == "push":
                    session = sessions.get(stream_id)
                    if session is None:
                        continue
                    _, _, samples, received_at = op
                    analyses = session[0].push(samples)
                    events = [e for a in analyses for e in session[1].update(a)]
                    if analyses or events:
                        results.append((stream_id, analyses, events, received_at))
                elif name == "gap" and stream_id in sessions:
                    sessions[stream_id][0].gap(op[2])
                elif name == "stalled" and stream_id in sessions:
                    events = session_stalled(sessions[stream_id][1], op[2])
                    if events:
                        results.append((stream_id, [], events, 0.0))
                elif name == "thresholds" and stream_id in sessions:
                    analyser, _ = sessions[stream_id]
                    sessions[stream_id] = (analyser, EventDetector(Thresholds(**op[2])))
                elif name == "close":
                    sessions.pop(stream_id, None)
            except Exception as exc:  # one stream's bad luck must not take the others down
                results.append((stream_id, [], [{"type": "analysis_error", "severity": "warning",
                                                 "detail": {"error": repr(exc)[:200]}}], 0.0))
        if results:
            outbox.send(results)


def session_stalled(detector: Any, seconds_since_frame: float) -> list[dict[str, Any]]:
    return list(detector.stalled(seconds_since_frame))


class _Worker:
    def __init__(self, index: int, pool: AnalysisPool) -> None:
        self.index = index
        self.pool = pool
        self.ops: queue.Queue[Op | None] = queue.Queue(MAX_QUEUED_OPS)
        self.proc: Any = None
        self.streams: dict[str, Op] = {}  # stream id -> its open op, to re-open after a restart

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        in_recv, self.in_send = ctx.Pipe(duplex=False)
        self.out_recv, out_send = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_worker, args=(in_recv, out_send), daemon=True, name=f"analysis-{self.index}")
        self.proc.start()
        in_recv.close()
        out_send.close()
        self.sender = threading.Thread(target=self._send_loop, daemon=True, name=f"analysis-send-{self.index}")
        self.receiver = threading.Thread(target=self._recv_loop, daemon=True, name=f"analysis-recv-{self.index}")
        self.sender.start()
        self.receiver.start()

    def _send_loop(self) -> None:
        while True:
            op = self.ops.get()
            if op is None:
                with contextlib.suppress(OSError):
                    self.in_send.send(None)
                return
            batch = [op]
            with contextlib.suppress(queue.Empty):
                while len(batch) < BATCH:
                    nxt = self.ops.get_nowait()
                    if nxt is None:
                        self.ops.put(None)
                        break
                    batch.append(nxt)
            try:
                self.in_send.send(batch)
            except OSError:
                return

    def _recv_loop(self) -> None:
        while True:
            try:
                results = self.out_recv.recv()
            except (EOFError, OSError):
                self.pool._worker_died(self)
                return
            self.pool._results_from_thread(results)


class AnalysisPool:
    def __init__(self, workers: int, on_results: Callable[[list[Result]], None]) -> None:
        self.on_results = on_results
        self.workers = [_Worker(i, self) for i in range(max(1, workers))]
        self.loop: asyncio.AbstractEventLoop | None = None
        self.dropped_ops = 0
        self._stopping = False

    def start(self) -> None:
        """Bind to the running loop; a worker process is spawned when its first stream opens, so an
        idle server (and every test that streams nothing) costs no analysis process."""
        self.loop = asyncio.get_running_loop()

    def _worker_for(self, stream_id: str) -> _Worker:
        worker = self.workers[zlib.crc32(stream_id.encode()) % len(self.workers)]
        if worker.proc is None and self.loop is not None and not self._stopping:
            worker.start()
        return worker

    def _put(self, stream_id: str, op: Op) -> bool:
        try:
            self._worker_for(stream_id).ops.put_nowait(op)
            return True
        except queue.Full:
            self.dropped_ops += 1
            return False

    def open(self, stream_id: str, kind: str, rate: float, thresholds: Any) -> None:
        op = ("open", stream_id, kind, rate, asdict(thresholds) if not isinstance(thresholds, dict) else thresholds)
        worker = self._worker_for(stream_id)
        worker.streams[stream_id] = op
        self._put(stream_id, op)

    def push(self, stream_id: str, samples: np.ndarray, received_at: float) -> bool:
        """Queue samples; False if the worker is so far behind that they were dropped (record a gap)."""
        return self._put(stream_id, ("push", stream_id, samples.astype(np.float32), received_at))

    def gap(self, stream_id: str, missing_samples: int) -> None:
        self._put(stream_id, ("gap", stream_id, missing_samples))

    def stalled(self, stream_id: str, seconds: float) -> None:
        self._put(stream_id, ("stalled", stream_id, seconds))

    def set_thresholds(self, stream_id: str, thresholds: Any) -> None:
        values = asdict(thresholds) if not isinstance(thresholds, dict) else thresholds
        op = self._worker_for(stream_id).streams.get(stream_id)
        if op is not None:
            self._worker_for(stream_id).streams[stream_id] = (*op[:4], values)
        self._put(stream_id, ("thresholds", stream_id, values))

    def close(self, stream_id: str) -> None:
        self._worker_for(stream_id).streams.pop(stream_id, None)
        self._put(stream_id, ("close", stream_id))

    def _results_from_thread(self, results: list[Result]) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.on_results, results)

    def _worker_died(self, worker: _Worker) -> None:
        if self._stopping:
            return
        log.error("analysis worker %d died (exit %s); restarting it and re-opening %d streams",
                  worker.index, worker.proc.exitcode if worker.proc else None, len(worker.streams))
        with contextlib.suppress(queue.Full):
            worker.ops.put_nowait(None)  # ends the old sender thread
        # The streams are re-opened first: samples queued while the worker restarts come after their open.
        fresh: queue.Queue[Op | None] = queue.Queue(MAX_QUEUED_OPS)
        known = dict(worker.streams)
        for op in known.values():
            fresh.put_nowait(op)
        worker.ops = fresh
        for stream_id, op in list(worker.streams.items()):  # opened (into the old queue) meanwhile
            if known.get(stream_id) is not op:
                fresh.put_nowait(op)
        time.sleep(RESTART_DELAY_S)  # on the receiver thread: a worker that dies at once cannot spin
        worker.start()

    @property
    def backlog(self) -> int:
        return sum(w.ops.qsize() for w in self.workers)

    async def stop(self) -> None:
        self._stopping = True
        for w in self.workers:
            with contextlib.suppress(queue.Full):
                w.ops.put_nowait(None)
        for w in self.workers:
            if w.proc is not None:
                await asyncio.get_running_loop().run_in_executor(None, w.proc.join, 5)
                if w.proc.is_alive():
                    w.proc.kill()
