"""What one concern asks of another, as Protocols: a concern depends on these, never on another
concern's module, and ``server/app.py`` hands it the object that does the work (as LiveKit's
``pkg/*/interfaces.go`` do). Tests can hand it a fake."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, Literal, Protocol

from server.core.i18n import Text
from server.core.identity import Principal

Urgency = Literal["low", "normal", "high", "critical"]  # as stored on a notification


class Component(Protocol):
    """A long-lived part of the server: started in order at start-up, stopped in reverse at shutdown."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Broadcaster(Protocol):
    """Emits to connected clients, in whichever process holds their sockets."""

    async def to_patient(self, patient_id: Any, event: str, data: Any) -> None:
        """To the patient's room: the patient's sockets and those of every linked caregiver and clinician."""

    async def to_user(self, user_id: Any, event: str, data: Any) -> None:
        """To every connected device of one user."""

    async def to_room(self, room: str, event: str, data: Any, skip_sid: str | None = None) -> None:
        """To a room or one socket (a socket id is a room too)."""


class Notifier(Protocol):
    """Stored notifications, pushed live to connected users and to the devices of the others."""

    async def notify(self, user_ids: Iterable[Any], kind: str, title: str | Text, body: str | Text = "", *,
                     patient_id: Any = None, data: dict[str, Any] | None = None,
                     urgency: Urgency = "normal", live: bool = True, push: bool = True) -> list[Any]:
        """A ``Text`` title or body is rendered in each user's language (``server.core.i18n``); a str is as is.
        ``live=False``: the caller reached the connected devices with its own event; ``push=False``: stored and
        shown live, not pushed to devices (the caller pushes it its own way, e.g. a call's VoIP ring)."""


class Online(Protocol):
    """Who is connected, in this process or any live one."""

    async def user_online(self, user_id: Any) -> bool:
        """Whether the user has a connected socket anywhere."""

    async def socket_alive(self, user_id: Any, sid: str) -> bool:
        """Whether socket ``sid`` of the user is still held by this or a live process."""

    async def live_devices(self, user_id: Any) -> set[str] | None:
        """The ``device_id``s of the user's connected sockets, in any live process; None if that cannot be told
        now (Redis unreachable)."""


class AlertRaiser(Protocol):
    """Raises an emergency alert to a patient's care team: stored before it is pushed to every device of every
    linked caregiver and clinician, escalated until someone acknowledges it (``server.alerts.alerts.Alerts``).
    While one of the same ``kind`` is open for the patient, that one is returned and no other is raised.
    ``on_demand`` (someone asked for it, e.g. triage): refused (``ApiError`` ``too_many_alerts``) past a daily cap.
    The alert carries its title and body in English; each recipient's notification renders a ``Text`` in theirs."""

    async def raise_alert(self, patient_id: Any, kind: str, title: str | Text, body: str | Text = "", *,
                          source: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
                          raised_by: Principal | None = None, on_demand: bool = False) -> Any:
        """The alert (its ``id`` names it)."""


class NotificationLookup(Notifier, Protocol):
    """A Notifier that also tells whether a notification is stored already, so that work re-run after its
    process died (a lease that ran out) does not notify twice."""

    async def notified(self, user_id: Any, kind: str, data: dict[str, Any]) -> bool:
        """Whether ``user_id`` has a notification of ``kind`` whose data holds every item of ``data``."""


class DoseSchedule(Protocol):
    """The dose scheduler as the medicine box uses it (``server.meds.scheduler.Scheduler``): hooks run when
    doses fall due, when one is confirmed and on every pass; the stored doses and the claim that takes work
    from them under a lease; confirming a dose; waking the loop; the drawers the patient's medications are in."""

    on_due: list[Callable[[list[dict[str, Any]]], Awaitable[None]]]
    on_confirmed: list[Callable[[dict[str, Any]], Awaitable[None]]]
    ticks: list[Callable[[datetime], Awaitable[None]]]

    @property
    def doses(self) -> Any:
        """The ``dose_events`` collection (PyMongo)."""

    async def claim(self, query: dict[str, Any], update: dict[str, Any], owner: str = "lease_owner",
                    limit: int = 500) -> tuple[str, list[dict[str, Any]]]: ...

    async def release(self, owner: str, token: str, claimed: list[dict[str, Any]], changes: dict[str, Any]) -> None:
        """The doses ``claimed`` under ``token`` given back (``owner`` cleared) with ``changes``."""

    async def confirm(self, dose_id: Any, patient_id: Any, via: str, by: Any) -> dict[str, Any] | None: ...

    def wake(self) -> None: ...

    async def drawers(self, patient_id: Any) -> list[dict[str, Any]]:
        """``{drawer, medication_id, name}`` of each active medication of the patient kept in a drawer."""


class VitalEvents(Protocol):
    """What streaming asks of the vitals concern: each patient's alert thresholds for the stream analysers,
    and the events the analysers raise, stored and pushed (``server/vitals``' ``Vitals``)."""

    async def load_thresholds(self, patient_id: Any) -> Any:
        """Read the patient's thresholds from the store into the cache ``thresholds_for`` answers from."""

    def thresholds_for(self, patient_id: Any) -> Any:
        """The patient's cached thresholds (ml's ``Thresholds``)."""

    async def record(self, patient_id: Any, stream_id: Any, signal: str | None, event: dict[str, Any]) -> Any:
        """Store a vital event raised by a stream's analysis, then push it."""


class SocketSender(Protocol):
    """Sends to one socket of this process directly and says how much already waits on it, so a live view
    can hold back for a slow watcher instead of queueing without bound (``server/transport``' ``Realtime``)."""

    def backlog(self, sid: str) -> int | None:
        """Packets waiting on the socket's connection; None if the socket is not (or no longer) here."""

    async def to_socket(self, sid: str, event: str, data: Any) -> None:
        """Emit to that socket of this process, nothing through the other processes."""


class DevicePush(Protocol):
    """Push through the durable outbox (``server.alerts.push``) to the registered devices of a user, whether or
    not they have sockets open: one outbox entry per registration and message, written before it is attempted.
    ``devices`` narrows it to those app installations (``device_id``s); None: all of the user's."""

    async def push_notes(self, notes: list[Any], devices: dict[Any, list[str]] | None = None) -> None:
        """Stored notifications (each in its user's language), to ``devices[note.user_id]`` or every device of the
        note's user; the notification id is the collapse id, so a retry never shows twice."""

    async def ring(self, user_id: Any, call: dict[str, Any], devices: list[str] | None = None) -> None:
        """A VoIP push for an incoming call (APNs PushKit ``voip``, FCM high-priority data) carrying the call id and
        caller, to the user's VoIP registrations (of ``devices``, or all)."""

    async def cancel_ring(self, user_id: Any, call_id: str, reason: str) -> None:
        """The call was answered elsewhere, hung up or missed: a cancelling VoIP push to every device rung."""


class PushRegistrations(Protocol):
    """Which app installations of a user can be reached by push (``server.alerts.device_delivery``)."""

    async def registered_devices(self, user_id: Any) -> set[str]:
        """The ``device_id``s with a push registration (any provider)."""
