"""Accounts and login sessions: register, log in, refresh with rotation, log out,
change password, and turning an access token into a ``Principal``."""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from typing import Any

from beanie import PydanticObjectId
from pymongo.errors import DuplicateKeyError

from server.care import audit
from server.care.documents import AuthSession, Role, User
from server.care.security import PasswordWork, TokenService, check_password, normalise_email
from server.core.config import Settings
from server.core.documents import utcnow
from server.core.errors import ApiError, unauthorized
from server.core.identity import Client, Principal, as_object_id
from server.infra.pubsub import ControlBus
from server.infra.ratelimit import FailureCounter

log = logging.getLogger(__name__)


class AuthService:
    def __init__(self, settings: Settings, tokens: TokenService, failures: FailureCounter, bus: ControlBus) -> None:
        self.settings = settings
        self.tokens = tokens
        self.failures = failures
        self.bus = bus
        self.passwords = PasswordWork(settings.password_queue)

    async def new_session(self, user: User, client: Client) -> dict[str, Any]:
        """A login for ``user``: its session stored, its token pair returned."""
        assert user.id is not None
        sid = str(PydanticObjectId())
        jti = secrets.token_urlsafe(12)
        session = AuthSession(
            id=PydanticObjectId(sid), user_id=user.id, current_jti=jti,
            expires_at=utcnow() + timedelta(seconds=self.settings.refresh_token_ttl_s),
            client_addr=client.addr, user_agent=(client.user_agent or "")[:200] or None,
        )
        await session.insert()
        return self._token_pair(user, sid, jti)

    def _token_pair(self, user: User, sid: str, refresh_jti: str) -> dict[str, Any]:
        access, _ = self.tokens.issue("access", str(user.id), sid, role=user.acting_role)
        refresh, _ = self.tokens.issue("refresh", str(user.id), sid, jti=refresh_jti)
        return {"access_token": access, "refresh_token": refresh, "token_type": "Bearer",
                "expires_in": self.settings.access_token_ttl_s}

    async def register(self, email: str, password: str, name: str, role: Role, client: Client) -> dict[str, Any]:
        if role == "clinician":  # vouched for by an organisation, never self-declared
            await audit.record("auth.register", outcome="denied", client=client, role=role)
            raise ApiError("clinician_invite_required", "Clinicians join through an invitation from their "
                           "organisation; register as a patient or caregiver", 403, {"field": "role"})
        try:
            email = normalise_email(email)
        except ValueError:
            raise ApiError("invalid_email", "That is not a valid email address", 422, {"field": "email"}) from None
        check_password(password, email)
        s = self.settings  # every registration counts (not only failures): accounts are what guesses are made from
        await self.failures.take([(f"register:ip:{client.addr}", s.register_max_per_ip),
                                  (f"register:acct:{email}", s.login_max_failures_per_account)],
                                 "Too many registrations from here; try again later")
        user = User(email=email, password_hash=await self.passwords.hash(password), name=name.strip(), role=role)
        try:
            await user.insert()
        except DuplicateKeyError:
            raise ApiError("email_taken", "An account with that email already exists", 409,
                           {"field": "email"}) from None
        await audit.record("auth.register", user_id=user.id, role=user.role, client=client)
        return {"user": user.public(), **await self.new_session(user, client)}

    async def _guess(self, scope: str, account: str, client: Client, password_hash: str | None,
                     password: str) -> bool:
        """Check a password guess, counted per account and per address before the Argon2 work it costs; a
        wrong one stays counted, a right one (or one refused as ``busy``, so not checked) is given back."""
        taken = await self.failures.take([(f"{scope}:acct:{account}", self.settings.login_max_failures_per_account),
                                          (f"{scope}:ip:{client.addr}", self.settings.login_max_failures_per_ip)],
                                         "Too many failed attempts; try again later")
        try:
            right = await self.passwords.verify(password_hash, password)
        except ApiError:  # busy
            await self.failures.give_back(taken)
            raise
        if right:
            await self.failures.give_back(taken)
        return right

    async def login(self, email: str, password: str, client: Client) -> dict[str, Any]:
        email = email.strip().lower()
        user = await User.find_one(User.email == email)
        if not await self._guess("login", email, client, user.password_hash if user else None, password) \
                or user is None:
            await audit.record("auth.login", user_id=user.id if user else None, outcome="denied", client=client,
                               email=email)
            raise unauthorized("Email or password is wrong", "invalid_credentials")
        await self.failures.reset(f"login:acct:{email}")
        if user.suspended:  # told only to whoever knows the password
            await audit.record("auth.login", user_id=user.id, outcome="denied", client=client, reason="suspended")
            raise suspended()
        await audit.record("auth.login", user_id=user.id, role=user.acting_role, client=client)
        return {"user": user.public(), **await self.new_session(user, client)}

    async def refresh(self, refresh_token: str, client: Client) -> dict[str, Any]:
        claims = self.tokens.decode("refresh", refresh_token)
        sid = as_object_id(claims.sid, "sid")
        new_jti = secrets.token_urlsafe(12)
        now = utcnow()
        # Compare-and-swap: only the current refresh token of a live family rotates.
        rotated = await AuthSession.get_pymongo_collection().find_one_and_update(
            {"_id": sid, "current_jti": claims.jti, "revoked_at": None, "expires_at": {"$gt": now}},
            {"$set": {"current_jti": new_jti, "last_used_at": now}},
        )
        user = await User.get(as_object_id(claims.sub, "sub"))
        if rotated is None or user is None:
            session = await AuthSession.get(sid)
            if session is not None and session.revoked_at is None and session.current_jti != claims.jti:
                # A refresh token we issued, used a second time: assume it was stolen.
                await self.revoke_sessions(session.user_id, [str(sid)], "refresh_token_reused")
                await audit.record("auth.refresh_reuse", user_id=session.user_id, outcome="denied", client=client)
                raise unauthorized("This refresh token was already used; the session has been revoked",
                                   "refresh_token_reused")
            raise unauthorized("The session has ended; log in again", "session_revoked")
        if user.suspended:
            raise suspended()
        await audit.record("auth.refresh", user_id=user.id, role=user.acting_role, client=client)
        return self._token_pair(user, str(sid), new_jti)

    async def revoke_sessions(self, user_id: PydanticObjectId, sids: list[str], reason: str) -> None:
        await AuthSession.get_pymongo_collection().update_many(
            {"_id": {"$in": [PydanticObjectId(s) for s in sids]}, "user_id": user_id, "revoked_at": None},
            {"$set": {"revoked_at": utcnow(), "revoked_reason": reason}},
        )
        await self.bus.publish("sessions_revoked", user_id=str(user_id), sids=sids)

    async def live_sessions(self, user_id: PydanticObjectId) -> list[str]:
        return [str(s.id) async for s in AuthSession.find(
            AuthSession.user_id == user_id, AuthSession.revoked_at == None)]  # noqa: E711 (query, not comparison)

    async def end_all_sessions(self, user_id: PydanticObjectId, reason: str) -> None:
        """Every login of the user ends now, and their sockets in every process."""
        await self.revoke_sessions(user_id, await self.live_sessions(user_id), reason)

    async def logout(self, principal: Principal, client: Client) -> None:
        await self.revoke_sessions(principal.user_id, [principal.sid], "logout")
        await audit.record("auth.logout", principal=principal, client=client)

    async def change_password(self, principal: Principal, current: str, new: str, client: Client) -> None:
        user = await User.get(principal.user_id)
        if user is None:
            raise unauthorized()
        if not await self._guess("password", str(user.id), client, user.password_hash, current):
            await audit.record("auth.password_change", principal=principal, outcome="denied", client=client)
            raise ApiError("invalid_credentials", "The current password is wrong", 403, {"field": "current_password"})
        check_password(new, user.email)
        user.password_hash = await self.passwords.hash(new)
        user.password_changed_at = utcnow()
        await user.save()
        others = [sid for sid in await self.live_sessions(principal.user_id) if sid != principal.sid]
        if others:
            await self.revoke_sessions(principal.user_id, others, "password_changed")
        await audit.record("auth.password_change", principal=principal, client=client, revoked_sessions=len(others))

    async def authenticate(self, access_token: str) -> Principal:
        """Verify an access token and that its session is still live."""
        claims = self.tokens.decode("access", access_token)
        session = await AuthSession.get(as_object_id(claims.sid, "sid"))
        if session is None or session.revoked_at is not None or str(session.user_id) != claims.sub:
            raise unauthorized("This session has been revoked; log in again", "session_revoked")
        user = await User.get(session.user_id)
        if user is None:
            raise unauthorized("The account no longer exists", "session_revoked")
        if user.suspended:  # a login racing the suspension is refused here
            raise suspended()
        return Principal(user_id=session.user_id, role=user.acting_role, sid=claims.sid, name=user.name)


def suspended() -> ApiError:
    return ApiError("account_suspended", "Your organisation has suspended this account; ask its administrator", 403)
