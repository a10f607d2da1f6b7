"""No cheap guessing or account farming: registrations are limited per client address (and per email),
password guesses (logins, password changes) per account and per address, each counted before the Argon2
work it would cost, atomically, so guesses sent in parallel cannot all slip under the limit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from beanie import PydanticObjectId

from server.care.documents import AuditEntry, User
from server.infra.embedded_store import EmbeddedStore
from server.infra.ratelimit import FailureCounter
from tests.helpers import PASSWORD, Api
from tests.security.serving import serve

WRONG = "not-the-password-123"


def _throttled(status: int, body: Any) -> bool:
    return (status == 429 and body["error"]["code"] == "too_many_attempts"
            and body["error"]["details"]["retry_after_s"] > 0)


async def test_registrations_from_one_address_are_capped(store: EmbeddedStore, tmp_path: Path,
                                                         aiohttp_server: Any) -> None:
    async with serve(aiohttp_server, store, tmp_path, register_max_per_ip=5) as api:
        replies = await asyncio.gather(*(api.request("POST", "/api/auth/register", json={
            "email": f"farm{i}@example.org", "password": PASSWORD, "name": "Farm", "role": "caregiver"})
            for i in range(12)))
        assert [s for s, _ in replies].count(201) == 5
        assert all(_throttled(s, b) for s, b in replies if s != 201), replies
        assert await User.find_all().count() == 5


async def test_parallel_password_guesses_on_one_account_get_the_limit_only(
        store: EmbeddedStore, tmp_path: Path, aiohttp_server: Any) -> None:
    async with serve(aiohttp_server, store, tmp_path, trust_forwarded=True) as api:
        victim = await api.register("patient")
        limit = 5  # HEALTHMATE_LOGIN_MAX_FAILURES_PER_ACCOUNT's default
        # 40 guesses at once, each from its own address (the per-address limit is not what stops them).
        replies = await asyncio.gather(*(api.request(
            "POST", "/api/auth/login", json={"email": victim.email, "password": f"{WRONG}{i}"},
            headers={"X-Forwarded-For": f"203.0.113.{i}"}) for i in range(40)))
        assert [s for s, _ in replies].count(401) == limit
        assert all(_throttled(s, b) for s, b in replies if s != 401), replies
        denied = await AuditEntry.find(AuditEntry.action == "auth.login", AuditEntry.outcome == "denied").count()
        assert denied == limit  # only those were checked against the hash
        # Locked: even the right password waits for the window.
        status, body = await api.request("POST", "/api/auth/login", json={"email": victim.email,
                                                                           "password": PASSWORD})
        assert _throttled(status, body)


async def test_password_change_guesses_are_capped_per_account(api: Api) -> None:
    user = await api.register("patient")
    before = await User.get(PydanticObjectId(user.id))
    replies = await asyncio.gather(*(api.request("POST", "/api/me/password", user, json={
        "current_password": f"{WRONG}{i}", "new_password": "a-brand-new-passphrase"}) for i in range(20)))
    assert [s for s, _ in replies].count(403) == 5
    assert all(_throttled(s, b) for s, b in replies if s != 403), replies
    status, body = await api.request("POST", "/api/me/password", user, json={
        "current_password": PASSWORD, "new_password": "a-brand-new-passphrase"})
    assert _throttled(status, body)
    after = await User.get(PydanticObjectId(user.id))
    assert before is not None and after is not None and after.password_hash == before.password_hash
    status, _ = await api.request("POST", "/api/auth/login", json={"email": user.email, "password": PASSWORD})
    assert status == 200  # the old password still works: nothing changed


async def test_logins_from_one_address_are_capped_across_accounts(
        store: EmbeddedStore, tmp_path: Path, aiohttp_server: Any) -> None:
    async with serve(aiohttp_server, store, tmp_path, login_max_failures_per_ip=8) as api:
        emails = [f"sprayed{i}@example.org" for i in range(12)]  # password spraying: one guess per account
        replies = await asyncio.gather(*(api.request("POST", "/api/auth/login", json={"email": e, "password": WRONG})
                                         for e in emails))
        assert [s for s, _ in replies].count(401) == 8
        assert all(_throttled(s, b) for s, b in replies if s != 401), replies


async def test_a_right_password_resetting_the_count_mid_guess_breaks_no_login(api: Api) -> None:
    """On the store (no Redis), a right password's reset can delete the account's window between a parallel
    guess making it and counting in it (the login storm met it as ``500 internal``): every attempt is
    still counted or refused, none fails."""
    del api  # (the server's store and documents, without Redis)
    counter = FailureCounter(3600)
    for round_ in range(60):
        key = f"login:acct:raced{round_}@example.org"
        outcomes = await asyncio.gather(*(counter.take([(key, 100)], "Too many") for _ in range(4)),
                                        *(counter.reset(key) for _ in range(2)), return_exceptions=True)
        assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
