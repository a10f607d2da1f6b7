"""Care-team linking: a patient issues a short single-use code (also as a QR); a caregiver or
clinician redeems it; either side can end the link, effective on live connections at once."""

from __future__ import annotations

import io
import secrets
from datetime import timedelta
from typing import Any

import segno
from beanie import PydanticObjectId
from beanie.operators import In

from server.care import audit
from server.care.access import care_team, memberships
from server.care.documents import Link, LinkCode, User
from server.core.config import Settings
from server.core.documents import aware, iso, utcnow
from server.core.errors import ApiError, forbidden, not_found
from server.core.identity import Client, Principal
from server.core.ports import Broadcaster
from server.infra.pubsub import ControlBus
from server.infra.ratelimit import FailureCounter

CODE_ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"  # no 0/O, 1/I/L, U: read aloud and typed by hand
CODE_LENGTH = 8
MAX_OPEN_CODES = 10


def _code_payload(code: str) -> str:
    return f"healthmate://link?code={code}"


async def link_json(link: Link, users: dict[PydanticObjectId, User] | None = None) -> dict[str, Any]:
    if users is None:
        found = await User.find(In(User.id, [link.patient_id, link.member_id])).to_list()
        users = {u.id: u for u in found}  # type: ignore[misc]
    patient, member = users.get(link.patient_id), users.get(link.member_id)
    return {
        "id": link.id,
        "patient": {"id": str(link.patient_id), "name": patient.name if patient else None},
        "member": {"id": str(link.member_id), "name": member.name if member else None, "role": link.member_role},
        "created_at": iso(link.created_at),
        "revoked_at": iso(link.revoked_at),
    }


class Linking:
    def __init__(self, broadcaster: Broadcaster, bus: ControlBus, failures: FailureCounter, settings: Settings) -> None:
        self.broadcaster = broadcaster
        self.bus = bus
        self.failures = failures
        self.settings = settings
        self.code_ttl = timedelta(seconds=settings.link_code_ttl_s)

    async def create_code(self, principal: Principal, client: Client) -> dict[str, Any]:
        if principal.role != "patient":
            raise forbidden("Only a patient can create a link code")
        now = utcnow()
        open_codes = await LinkCode.find(LinkCode.patient_id == principal.user_id, LinkCode.redeemed_at == None,  # noqa: E711
                                         LinkCode.expires_at > now).count()
        if open_codes >= MAX_OPEN_CODES:
            raise ApiError("too_many_codes", "Too many unused link codes; wait for them to expire", 429)
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        doc = LinkCode(code=code, patient_id=principal.user_id, expires_at=now + self.code_ttl)
        await doc.insert()
        await audit.record("link.code_create", principal=principal, patient_id=principal.user_id, client=client)
        return {"code": code, "expires_at": iso(doc.expires_at), "qr_url": f"/api/links/codes/{code}/qr.png",
                "qr_payload": _code_payload(code)}

    async def qr_png(self, principal: Principal, code: str) -> bytes:
        """The QR of one of the patient's own open codes."""
        code = code.upper()
        doc = await LinkCode.find_one(LinkCode.code == code)
        if doc is None or doc.patient_id != principal.user_id or doc.redeemed_at is not None \
                or aware(doc.expires_at) <= utcnow():
            raise not_found("link code")
        buf = io.BytesIO()
        segno.make(_code_payload(code), error="m").save(buf, kind="png", scale=8, border=2)
        return buf.getvalue()

    async def _announce(self, link: Link, change: str) -> None:
        """Bring every process's rooms in step first, then tell both sides."""
        await self.bus.publish("link_changed", patient_id=str(link.patient_id), member_id=str(link.member_id),
                               active=link.revoked_at is None)
        body = {"change": change, "link": await link_json(link)}
        await self.broadcaster.to_user(link.patient_id, "links:changed", body)
        await self.broadcaster.to_user(link.member_id, "links:changed", body)

    async def redeem(self, principal: Principal, code: str, client: Client) -> dict[str, Any]:
        if principal.role not in ("caregiver", "clinician"):
            raise forbidden("Only a caregiver or clinician can redeem a link code")
        s = self.settings  # guesses per account, per address and over everyone (what bounds a botnet)
        taken = await self.failures.take([(f"redeem:acct:{principal.user_id}", s.link_redeem_max_failures_per_account),
                                          (f"redeem:ip:{client.addr}", s.link_redeem_max_failures_per_ip),
                                          ("redeem:all", s.link_redeem_max_failures_global)],
                                         "Too many wrong link codes; try again later")
        now = utcnow()
        claimed = await LinkCode.get_pymongo_collection().find_one_and_update(
            {"code": code, "redeemed_at": None, "expires_at": {"$gt": now}},
            {"$set": {"redeemed_at": now, "redeemed_by": principal.user_id}},
        )
        if claimed is None:
            await audit.record("link.redeem", principal=principal, outcome="denied", client=client)
            raise ApiError("invalid_code", "This link code is not valid, was already used, or has expired", 404,
                           {"field": "code"})
        await self.failures.give_back(taken)  # a right code is not a failure
        patient_id = claimed["patient_id"]
        link = Link(id=Link.key(patient_id, principal.user_id), patient_id=patient_id, member_id=principal.user_id,
                    member_role=principal.role)  # type: ignore[arg-type]
        await Link.get_pymongo_collection().update_one(
            {"_id": link.id},
            {"$set": {"patient_id": patient_id, "member_id": principal.user_id, "member_role": principal.role,
                      "created_at": link.created_at, "revoked_at": None, "revoked_by": None, "schema_version": 1}},
            upsert=True,
        )
        await audit.record("link.create", principal=principal, patient_id=patient_id, client=client)
        await self._announce(link, "added")
        return await link_json(link)

    async def links(self, principal: Principal) -> list[dict[str, Any]]:
        links = await (care_team if principal.role == "patient" else memberships)(principal.user_id)
        ids = {i for link in links for i in (link.patient_id, link.member_id)}
        users = {u.id: u for u in await User.find(In(User.id, list(ids))).to_list()}
        return [await link_json(link, users) for link in links]  # type: ignore[arg-type]

    async def revoke(self, principal: Principal, link_id: str, client: Client) -> dict[str, Any]:
        link = await Link.get(link_id)
        if link is None or link.revoked_at is not None or principal.user_id not in (link.patient_id, link.member_id):
            raise not_found("link")
        link.revoked_at = utcnow()
        link.revoked_by = principal.user_id
        await link.save()
        await audit.record("link.revoke", principal=principal, patient_id=link.patient_id, client=client,
                           member_id=str(link.member_id))
        await self._announce(link, "revoked")
        return await link_json(link)
