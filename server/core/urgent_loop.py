"""An event loop that runs urgent work's callbacks before those already waiting.

Under the ``rush`` bench's burst the server's event loop has hundreds of callbacks ready at a time (other patients'
messages, their store replies, the frames written to their sockets), and each step of a crisis reading's way (every
store reply it waits for, the frame of its alert written to each recipient) waited for all of those queued before
it. This loop is the standard library's (uvloop's queue is in C and cannot be reordered) with three kinds of callback
put ahead of those waiting, in the order they came:

- urgent work's own (``server.core.urgency``: a crisis reading's task and the tasks it starts), e.g. its next step
  once a store reply is in;
- those that urgent work schedules, whatever they run: e.g. waking the writer task of each recipient's socket for the
  alert's frame;
- the reads of a socket that urgent work is waiting on: PyMongo's connections stop reading once a reply is in and
  start again when a command is sent, so a reply to urgent work's command (on the urgent lane,
  ``server.infra.store.URGENT_LANE``) is read before the other sockets ready, and read twice in a row (PyMongo reads
  a reply's header, then the rest, each a read of its own).

Nothing else changes order, and with ``HEALTHMATE_URGENT_FIRST=off`` nothing does (the server then runs on uvloop, as
before: ``server.cli.event_loop``). It relies on two internals of ``asyncio.BaseEventLoop`` that every version from
3.11 has kept, the ``_ready`` deque and ``_add_callback`` (``tests/test_urgent_loop.py`` fails without them), and on
PyMongo's pausing its reads (the same tests, with the store)."""


from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from contextvars import Context
from typing import Any

from server.core.urgency import URGENCY


class UrgentFirstLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        # The urgent callbacks at the head of ``_ready``, in their order (those that have run since are dropped when
        # the next one comes): a new one goes after them, so that urgent callbacks keep the order they came in.
        self._ahead: collections.deque[asyncio.Handle] = collections.deque()

    def call_soon(self, callback: Callable[..., object], *args: Any,
                  context: Context | None = None) -> asyncio.Handle:
        handle = super().call_soon(callback, *args, context=context)
        if URGENCY.here() or (context is not None and URGENCY.owns(context)):
            self._put_ahead(handle)
        return handle

    def _add_callback(self, handle: asyncio.Handle) -> None:  # a socket's (ready to read or write), or a signal's
        super()._add_callback(handle)  # type: ignore[misc]
        ready = self._ready  # type: ignore[attr-defined]
        if ready and ready[-1] is handle and URGENCY.owns(handle._context):  # type: ignore[attr-defined]
            self._put_ahead(handle)
            # Twice: PyMongo reads a reply in two reads (its header, then the rest), and the second would otherwise
            # come at the next turn of the loop, after everything queued meanwhile. (A read finding nothing more is
            # a no-op: the socket does not block; none follows once the transport has stopped reading.)
            self._put_ahead(super().call_soon(_again, handle))

    def _put_ahead(self, handle: asyncio.Handle) -> None:
        """Move ``handle``, just queued last, to just after the urgent callbacks waiting at the head."""
        ready = self._ready  # type: ignore[attr-defined]
        ready.pop()
        ahead = self._ahead
        while ahead and not (ready and ready[0] is ahead[0]):  # run since
            ahead.popleft()
        ready.insert(len(ahead), handle)
        ahead.append(handle)


def _again(handle: asyncio.Handle) -> None:
    if not handle.cancelled():
        handle._run()  # type: ignore[attr-defined]
