"""Per-stream sequence numbers: in order, a gap (frames missed), a duplicate or a late frame."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Verdict = Literal["ok", "gap", "duplicate", "late"]
RECENT = 64  # sequence numbers remembered to tell a duplicate from a late frame


@dataclass(frozen=True)
class Accepted:
    kind: Verdict
    missing: int = 0  # frames skipped before this one (``gap`` only)


class StreamSequencer:
    """Frames must arrive with increasing ``seq``. One beyond the next expected opens a gap of the
    frames skipped; one at or below the last accepted is dropped: a ``duplicate`` if it was seen,
    ``late`` if it had been given up as missing."""

    def __init__(self) -> None:
        self.last_seq: int | None = None
        self._next: int | None = None
        self._recent: set[int] = set()

    def resume(self, next_seq: int) -> None:
        """Continue a stream whose frames up to ``next_seq - 1`` were accepted elsewhere (failover)."""
        self._next = next_seq
        self.last_seq = next_seq - 1

    def accept(self, seq: int) -> Accepted:
        if self._next is None:
            verdict = Accepted("ok")
        elif seq >= self._next:
            missing = seq - self._next
            verdict = Accepted("gap", missing) if missing else Accepted("ok")
        elif seq in self._recent:
            return Accepted("duplicate")
        else:
            return Accepted("late")
        self._next = seq + 1
        self.last_seq = seq
        self._recent.add(seq)
        if len(self._recent) > RECENT:
            self._recent.discard(min(self._recent))
        return verdict
