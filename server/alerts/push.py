"""Push to the devices of users, whether or not they have sockets open: device push registrations
(``push:register``; a Web Push endpoint must be https and public, ``server.infra.safe_url``; ``apns-voip`` is a
PushKit token, for calls), and ``PushDispatcher``, the ``DevicePush`` of ``server.core.ports``, which turns
notifications and calls into entries of the durable outbox (``server.alerts.push_outbox``: written before any
attempt, sent by any process, retried until a deadline) for the providers (``server.alerts.push_providers``).

How a push is shown (``level_of``): an emergency alert, or any notification of urgency ``critical``, is
``critical`` (iOS critical alert with its sound, Android's critical channel at high priority, Web Push
``Urgency: high``); a dose reminder or a notification of urgency ``high`` is ``time_sensitive``; the rest
``normal`` (``low``: passive). The collapse id (``collapse_of``) is the alert's, the dose's or the
notification's id, and a call's id for its ring and cancel. (The registration events are in ``api.py``.)"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from beanie import PydanticObjectId
from beanie.operators import In

from server.alerts.documents import Notification, ProviderName, PushEntry, PushToken, RegisterIn
from server.alerts.push_outbox import Outbox, deadline_of
from server.alerts.push_providers import Provider, PushMessage
from server.care.documents import Membership
from server.core.config import Settings
from server.core.documents import in_chunks, utcnow
from server.core.errors import ApiError, forbidden
from server.core.identity import Principal
from server.infra import safe_url

log = logging.getLogger(__name__)
TOKENS_PER_USER = 20
VISIBLE: list[ProviderName] = ["fcm", "apns", "webpush", "webhook"]  # registrations that show notifications
RINGING: list[ProviderName] = ["apns-voip", "fcm"]  # a device's PushKit token, else its FCM token


def level_of(note: Notification) -> str:
    if note.urgency == "critical" or (note.kind == "alert" and note.data.get("alert_id")):
        return "critical"
    if note.kind == "reminder" or note.urgency == "high":
        return "time_sensitive"
    return "low" if note.urgency == "low" else "normal"


def collapse_of(note: Notification) -> str:
    for key in ("alert_id", "dose_id"):
        if isinstance(note.data.get(key), str) and note.data[key]:
            return note.data[key]
    return str(note.id)


def message_of(note: Notification) -> PushMessage:
    data = {"notification_id": str(note.id), "kind": note.kind}
    if note.patient_id is not None:
        data["patient_id"] = str(note.patient_id)
    data.update({k: str(v) for k, v in note.data.items() if isinstance(v, str | int | float | bool)})
    return PushMessage(title=note.title, body=note.body, urgency=note.urgency, data=data, level=level_of(note),
                       collapse_id=collapse_of(note))


def _stored(message: PushMessage) -> dict[str, Any]:
    out = asdict(message)
    del out["expires_at"]  # the entry's deadline says it
    return out


class PushDispatcher:
    def __init__(self, settings: Settings, providers: dict[str, Provider]) -> None:
        self.settings = settings
        self.providers = providers
        self.trusted = safe_url.trusted_origins(settings.webpush_trusted_origins)
        self.outbox = Outbox(settings, providers)

    async def start(self) -> None:
        await self.outbox.start()

    async def stop(self) -> None:
        await self.outbox.stop()
        for provider in {id(p): p for p in self.providers.values()}.values():
            try:
                await provider.close()
            except Exception:
                log.exception("closing push provider %s failed", provider.name)

    # --- registration ------------------------------------------------------------------------------

    async def register(self, user: PydanticObjectId, device: str, body: RegisterIn) -> dict[str, Any]:
        """This device's address at a provider (replacing the one it had there). A Web Push endpoint is a
        URL the server will post to: https and public only (``unsafe_url`` otherwise), see ``safe_url``."""
        key = f"{user}:{device}:{body.provider}"
        if body.subscription is not None:
            try:
                await safe_url.check(str(body.subscription.endpoint), self.trusted)
            except safe_url.UnsafeURL as exc:
                exc.details["field"] = "subscription.endpoint"
                raise
        if await PushToken.find(PushToken.user_id == user, PushToken.id != key).count() >= TOKENS_PER_USER:
            raise ApiError("too_many_tokens", f"At most {TOKENS_PER_USER} push registrations per user", 409)
        subscription = body.subscription.model_dump(mode="json") if body.subscription else None
        doc = PushToken(id=key, user_id=user, device_id=device, provider=body.provider, token=body.token,
                        subscription=subscription)
        await doc.save()
        return {**doc.public(), "enabled": body.provider in self.providers}

    @staticmethod
    async def unregister(user: PydanticObjectId, device: str, provider: ProviderName | None) -> dict[str, Any]:
        """This device's addresses, at one provider or all."""
        query: dict[str, Any] = {"user_id": user, "device_id": device}
        if provider:
            query["provider"] = provider
        result = await PushToken.get_pymongo_collection().delete_many(query)
        return {"removed": result.deleted_count}

    # --- DevicePush ----------------------------------------------------------------------------------

    async def push(self, notes: list[Notification]) -> None:
        """The ``Notifications`` pusher (users with no connected device): every registration of theirs."""
        await self.push_notes(notes)

    async def push_notes(self, notes: list[Any], devices: dict[Any, list[str]] | None = None) -> None:
        """An outbox entry per notification and registration (of ``devices[user]`` only, when given) that shows
        notifications. An alert's entry replaces the waiting entry of an earlier level of the same alert."""
        if not self.providers or not notes:
            return
        wanted = None if devices is None else {str(u): set(d) for u, d in devices.items()}
        users = list({note.user_id for note in notes})
        by_user: dict[Any, list[PushToken]] = {}
        found = await asyncio.gather(*(PushToken.find(In(PushToken.user_id, chunk)).to_list()
                                       for chunk in in_chunks(users)))
        for token in (t for chunk in found for t in chunk):
            if token.provider in VISIBLE and token.provider in self.providers and (
                    wanted is None or token.device_id in wanted.get(str(token.user_id), ())):
                by_user.setdefault(token.user_id, []).append(token)
        now, entries = utcnow(), []
        for note in notes:
            message, alert_id = message_of(note), note.data.get("alert_id") if note.kind == "alert" else None
            level = int(note.data.get("level") or 0) if alert_id else 0
            for token in by_user.get(note.user_id, ()):
                entries.append(self._entry(token, str(note.id), message, note.kind, now,
                                           deadline_of(self.settings, bool(alert_id), now),
                                           alert_id=PydanticObjectId(alert_id) if alert_id else None,
                                           alert_level=level))
        superseded = [{"alert_id": e.alert_id, "token_id": e.token_id, "alert_level": {"$lt": e.alert_level}}
                      for e in entries if e.alert_id is not None and e.alert_level > 0]
        if superseded:  # not in flight: an escalation's push takes the place of the earlier one, not beside it
            await self.outbox.coll.delete_many({"$or": superseded, "lease_owner": None})
        await self.outbox.add(entries)

    async def ring(self, user_id: Any, call: dict[str, Any], devices: list[str] | None = None) -> None:
        """A VoIP push per device of the user (of ``devices``): to its PushKit token, else its FCM token."""
        call_id, caller = str(call["id"]), call.get("caller") or {}
        data = {"kind": "call", "call_id": call_id, "caller_id": str(caller.get("id", "")),
                "caller_name": str(caller.get("name", "")), "media": str(call.get("media", "audio")),
                "patient_id": str(call.get("patient_id", ""))}
        message = PushMessage(title="", body="", urgency="critical", data=data, level="critical", collapse_id=call_id,
                              voip=True)
        tokens = await PushToken.find(PushToken.user_id == PydanticObjectId(user_id),
                                      In(PushToken.provider, RINGING)).to_list()
        by_device: dict[str, PushToken] = {}
        for token in sorted(tokens, key=lambda t: RINGING.index(t.provider), reverse=True):
            by_device[token.device_id] = token  # the PushKit token wins
        now = utcnow()
        deadline = now + timedelta(seconds=self.settings.call_ring_timeout_s)
        await self.outbox.add([self._entry(t, f"ring:{call_id}", message, "call", now, deadline, call_id=call_id)
                               for t in by_device.values() if t.provider in self.providers
                               and (devices is None or t.device_id in devices)])

    async def cancel_ring(self, user_id: Any, call_id: str, reason: str) -> None:
        """Rings not yet tried are taken back; every device rung (or being rung) gets a cancelling VoIP push
        with the call's id as collapse id, replacing the ring where the OS allows."""
        query = {"call_id": call_id, "kind": "call", "user_id": PydanticObjectId(user_id)}
        await self.outbox.coll.delete_many({**query, "attempt": 0})
        rung = [PushEntry.model_validate(d) for d in await self.outbox.coll.find(query).to_list(None)]
        if not rung:
            return
        message = PushMessage(title="", body="", urgency="critical", level="critical", collapse_id=call_id, voip=True,
                              data={"kind": "call_cancel", "call_id": call_id, "reason": reason})
        now = utcnow()
        deadline = now + timedelta(seconds=self.settings.call_ring_timeout_s)
        await self.outbox.coll.delete_many(query)  # sent, in flight or waiting for a retry: none rings again
        await self.outbox.add([self._entry(r, f"cancel:{call_id}", message, "call_cancel", now, deadline,
                                           call_id=call_id) for r in rung])

    @staticmethod
    def _entry(to: PushToken | PushEntry, key: str, message: PushMessage, kind: str, now: datetime,
               deadline: datetime, **extra: Any) -> PushEntry:
        token_id = to.id if isinstance(to, PushToken) else to.token_id
        return PushEntry(id=f"{token_id}/{key}", token_id=token_id, user_id=to.user_id, device_id=to.device_id,
                         provider=to.provider, target=to.target, message=_stored(message), kind=kind,
                         collapse_id=message.collapse_id, next_attempt_at=now, deadline=deadline, created_at=now,
                         **extra)

    # --- the operator's view ------------------------------------------------------------------------

    async def stats(self, principal: Principal) -> dict[str, Any]:
        """The outbox and its history (counts only, no user's data), for an administrator of an organisation."""
        admin = await Membership.find_one({"user_id": principal.user_id, "role": "admin", "status": "active"})
        if admin is None:
            raise forbidden("Only an organisation's administrator may see the push statistics")
        return {"providers": sorted(self.providers), "workers": self.settings.push_workers,
                **await self.outbox.stats()}
