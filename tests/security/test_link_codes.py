"""Link codes can't be guessed. Wrong redemptions are counted atomically (the count is the check, in
Redis or in the store), per account, per client address and over everyone; the last bounds a botnet of
accounts and addresses, and from it the time to guess any one of 1,000 open codes is worked out against a
code's lifetime."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from beanie import PydanticObjectId

from server.app import SERVER
from server.care.documents import AuditEntry, Link, LinkCode
from server.care.linking import CODE_ALPHABET, CODE_LENGTH
from server.core.config import Settings
from server.infra.embedded_store import EmbeddedStore
from tests.helpers import Api, User
from tests.security.serving import serve

WRONG = "ZZZZZZZZ"  # a well-formed code no patient holds (Z is in the alphabet)


def _refused_for_attempts(status: int, body: Any) -> bool:
    return (status == 429 and body["error"]["code"] == "too_many_attempts"
            and body["error"]["details"]["retry_after_s"] > 0)


async def _redeem(api: Api, user: User, code: str, addr: str | None = None) -> tuple[int, Any]:
    headers = {"X-Forwarded-For": addr} if addr else {}
    return await api.request("POST", "/api/links/redeem", user, json={"code": code}, headers=headers)


@pytest.fixture(params=["store", "redis"])
async def api(request: pytest.FixtureRequest, store: EmbeddedStore, tmp_path: Path,
              aiohttp_server: Any, redis_url: str) -> Any:
    """The server counting in the store (no Redis configured) or in Redis."""
    async with serve(aiohttp_server, store, tmp_path, redis_url if request.param == "redis" else None) as api:
        yield api


async def test_parallel_wrong_codes_count_atomically(api: Api) -> None:
    limit = api.app[SERVER].settings.link_redeem_max_failures_per_account  # type: ignore[index]
    patient, carer = await api.register("patient"), await api.register("caregiver")
    _, code = await api.request("POST", "/api/links/codes", patient)
    # 60 guesses at once: read-then-write counting would let every one of them see zero failures.
    replies = await asyncio.gather(*(_redeem(api, carer, WRONG) for _ in range(60)))
    tried = [body for status, body in replies if status == 404]
    assert len(tried) == limit and all(b["error"]["code"] == "invalid_code" for b in tried)
    assert all(_refused_for_attempts(status, body) for status, body in replies if status != 404), replies
    denied = await AuditEntry.find(AuditEntry.actor_id == PydanticObjectId(carer.id),
                                   AuditEntry.action == "link.redeem", AuditEntry.outcome == "denied").count()
    assert denied == limit
    # Locked out, the right code is refused too, over Socket.IO as well, and stays unredeemed.
    sock = await api.socket(carer)
    reply = await sock.call("links:redeem", {"code": code["code"]})
    assert reply["ok"] is False and reply["error"]["code"] == "too_many_attempts"
    assert reply["error"]["details"]["retry_after_s"] > 0
    assert (await LinkCode.find_one(LinkCode.code == code["code"])).redeemed_at is None  # type: ignore[union-attr]
    assert await Link.find(Link.member_id == PydanticObjectId(carer.id)).count() == 0


async def test_a_right_code_does_not_count_as_a_failure(api: Api) -> None:
    limit = api.app[SERVER].settings.link_redeem_max_failures_per_account  # type: ignore[index]
    carer = await api.register("caregiver")
    for _ in range(limit - 1):
        assert (await _redeem(api, carer, WRONG))[0] == 404
    for _ in range(3):  # a carer linking three patients, one wrong code left before the limit
        patient = await api.register("patient")
        _, code = await api.request("POST", "/api/links/codes", patient)
        assert (await _redeem(api, carer, code["code"]))[0] == 201
    assert (await _redeem(api, carer, WRONG))[0] == 404
    assert _refused_for_attempts(*await _redeem(api, carer, WRONG))


async def test_a_botnet_of_accounts_and_addresses_meets_the_per_address_and_global_caps(
        store: EmbeddedStore, tmp_path: Path, aiohttp_server: Any) -> None:
    per_account, per_ip, overall = 4, 6, 10
    async with serve(aiohttp_server, store, tmp_path, trust_forwarded=True,
                     link_redeem_max_failures_per_account=per_account, link_redeem_max_failures_per_ip=per_ip,
                     link_redeem_max_failures_global=overall) as api:
        carers = [await api.register("caregiver") for _ in range(6)]
        # Two accounts from one address: that address's cap, not the two accounts' 8.
        replies = await asyncio.gather(*(_redeem(api, c, WRONG, "198.51.100.1") for c in carers[:2]
                                         for _ in range(per_account)))
        assert [s for s, _ in replies].count(404) == per_ip
        # Four more accounts, each from its own address, all at once: 4 + 4 + 4 + 4 allowed by their own caps,
        # the global cap leaves 10 - 6 = 4.
        replies = await asyncio.gather(*(_redeem(api, c, WRONG, f"203.0.113.{i}") for i, c in enumerate(carers[2:])
                                         for _ in range(per_account)))
        assert [s for s, _ in replies].count(404) == overall - per_ip
        assert all(_refused_for_attempts(s, b) for s, b in replies if s != 404)
        # A fresh account from a fresh address is refused too: the cap is over everyone.
        late = await api.register("caregiver")
        assert _refused_for_attempts(*await _redeem(api, late, WRONG, "192.0.2.77"))


async def test_finding_any_of_1000_open_codes_outlasts_a_code_by_orders_of_magnitude(api: Api) -> None:
    settings: Settings = api.app[SERVER].settings  # type: ignore[index]
    patient = await api.register("patient")
    _, issued = await api.request("POST", "/api/links/codes", patient)
    assert len(issued["code"]) == CODE_LENGTH and set(issued["code"]) <= set(CODE_ALPHABET)
    codes = len(CODE_ALPHABET) ** CODE_LENGTH  # 30^8 ≈ 6.6e11
    open_codes = 1000
    # However many accounts and addresses, wrong guesses over everyone are capped per window (enforced:
    # the botnet test above); a right guess needs a lucky one among them.
    guesses_per_s = settings.link_redeem_max_failures_global / settings.login_failure_window_s
    expected_s_to_a_hit = codes / open_codes / guesses_per_s
    ratio = expected_s_to_a_hit / settings.link_code_ttl_s
    # Defaults: 6.6e8 guesses at 10,000 per 15 min ≈ 5.9e7 s (1.9 years) against a 600 s code: ~1e5.
    assert ratio >= 100, ratio
    # Equivalently: the chance that any guess lands while a code lives is under 1 in 100.
    assert guesses_per_s * settings.link_code_ttl_s * open_codes / codes <= 1 / 100
