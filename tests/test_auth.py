"""Accounts and tokens over real HTTP: registration rules, login throttling, refresh rotation
and reuse detection, logout, password change, and forged/expired/misused tokens."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from server.care.documents import AuditEntry, AuthSession, User
from tests.conftest import TEST_SECRET
from tests.helpers import PASSWORD, Api


async def test_register_returns_user_and_tokens(api: Api) -> None:
    status, body = await api.request("POST", "/api/auth/register", json={
        "email": "  Maria.Silva@Example.ORG ", "password": PASSWORD, "name": "Maria", "role": "caregiver"})
    assert status == 201
    assert body["user"]["email"] == "maria.silva@example.org"
    assert body["user"]["role"] == "caregiver"
    assert "password_hash" not in body["user"]
    claims = jwt.decode(body["access_token"], TEST_SECRET, algorithms=["HS256"], audience="healthmate:access")
    assert claims["sub"] == body["user"]["id"] and claims["role"] == "caregiver" and claims["jti"]
    assert 14 * 60 <= claims["exp"] - claims["iat"] <= 15 * 60
    stored = await User.find_one(User.email == "maria.silva@example.org")
    assert stored is not None and stored.password_hash.startswith("$argon2id$")


async def test_email_unique_case_insensitively(api: Api) -> None:
    user = await api.register("patient")
    status, body = await api.request("POST", "/api/auth/register", json={
        "email": user.email.upper(), "password": PASSWORD, "name": "Twin", "role": "patient"})
    assert status == 409 and body["error"]["code"] == "email_taken"


@pytest.mark.parametrize(("password", "problem"), [
    ("short1!", "at least 10"),
    ("password123", "too common"),
    ("weak.user@example.org", "email"),
])
async def test_weak_passwords_refused(api: Api, password: str, problem: str) -> None:
    status, body = await api.request("POST", "/api/auth/register", json={
        "email": "weak.user@example.org", "password": password, "name": "W", "role": "patient"})
    assert status == 422 and body["error"]["code"] == "weak_password"
    assert problem in body["error"]["message"]
    assert await User.find_one(User.email == "weak.user@example.org") is None


@pytest.mark.parametrize("payload", [
    {"email": "x@example.org", "password": PASSWORD, "name": "X", "role": "admin"},
    {"email": "not-an-email", "password": PASSWORD, "name": "X", "role": "patient"},
    {"email": "x@example.org", "password": PASSWORD, "role": "patient"},
    {"email": "x@example.org", "password": PASSWORD, "name": "X", "role": "patient", "is_admin": True},
    [1, 2, 3],
])
async def test_register_bad_input_uniform_error(api: Api, payload: object) -> None:
    status, body = await api.request("POST", "/api/auth/register", json=payload)
    assert status == 422
    assert set(body["error"]) == {"code", "message", "details"}
    assert await User.find_one(User.email == "x@example.org") is None


async def test_non_json_body_refused(api: Api) -> None:
    status, body = await api.request("POST", "/api/auth/login", data="email=a&password=b",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and body["error"]["code"] == "unsupported_media_type"
    status, body = await api.request("POST", "/api/auth/login", data="{not json",
                                     headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"]["code"] == "invalid_json"


async def test_login_and_wrong_password(api: Api) -> None:
    user = await api.register("clinician")
    status, body = await api.request("POST", "/api/auth/login", json={"email": user.email, "password": PASSWORD})
    assert status == 200 and body["user"]["id"] == user.id and body["access_token"] and body["refresh_token"]
    status, body = await api.request("POST", "/api/auth/login", json={"email": user.email, "password": "wrong-" * 3})
    assert status == 401 and body["error"]["code"] == "invalid_credentials"
    status, body = await api.request("POST", "/api/auth/login", json={"email": "nobody@example.org",
                                                                       "password": PASSWORD})
    assert status == 401 and body["error"]["code"] == "invalid_credentials"
    denied = await AuditEntry.find(AuditEntry.action == "auth.login", AuditEntry.outcome == "denied").count()
    assert denied == 2


async def test_login_throttled_per_account_with_retry_after(api: Api) -> None:
    user = await api.register("patient")
    for _ in range(5):
        status, _ = await api.request("POST", "/api/auth/login", json={"email": user.email, "password": "x" * 12})
        assert status == 401
    async with api.http.post(api.base_url + "/api/auth/login",
                             json={"email": user.email, "password": PASSWORD}) as resp:
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) > 0
        assert (await resp.json())["error"]["code"] == "too_many_attempts"


async def test_refresh_rotates_and_reuse_revokes_family(api: Api) -> None:
    user = await api.register("patient")
    status, pair = await api.request("POST", "/api/auth/refresh", json={"refresh_token": user.refresh_token})
    assert status == 200 and pair["refresh_token"] != user.refresh_token
    # The old refresh token again: a replay. The whole family is revoked, the new tokens too.
    status, body = await api.request("POST", "/api/auth/refresh", json={"refresh_token": user.refresh_token})
    assert status == 401 and body["error"]["code"] == "refresh_token_reused"
    status, body = await api.request("POST", "/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert status == 401
    status, body = await api.request("GET", "/api/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert status == 401 and body["error"]["code"] == "session_revoked"


async def test_refresh_token_is_not_an_access_token(api: Api) -> None:
    user = await api.register("patient")
    status, body = await api.request("GET", "/api/me", headers={"Authorization": f"Bearer {user.refresh_token}"})
    assert status == 401 and body["error"]["code"] == "token_invalid"
    status, body = await api.request("POST", "/api/auth/refresh", json={"refresh_token": user.access_token})
    assert status == 401 and body["error"]["code"] == "token_invalid"


def _forge(claims: dict, key: object = TEST_SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)  # type: ignore[arg-type]


def _swap_alg(token: str, alg: str) -> str:
    _, payload, sig = token.split(".")
    header = jwt.utils.base64url_encode(f'{{"alg":"{alg}","typ":"JWT"}}'.encode()).decode()
    return f"{header}.{payload}.{sig}"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_forged_and_expired_tokens_refused(api: Api) -> None:
    user = await api.register("patient")
    good = jwt.decode(user.access_token, TEST_SECRET, algorithms=["HS256"], audience="healthmate:access")
    header_none = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    payload = jwt.utils.base64url_encode(jwt.api_jws.json.dumps(good).encode()).decode()
    now = int(time.time())
    attacks = {
        "alg none": f"{header_none}.{payload}.",
        "other algorithm": _forge(good, alg="HS512"),
        "wrong key": _forge(good, key="k" * 40),
        "expired": _forge({**good, "iat": now - 3600, "exp": now - 1800}),
        "wrong audience": _forge({**good, "aud": "someone-else"}),
        "no session": _forge({k: v for k, v in good.items() if k != "sid"}),
        # HS/RS confusion: a token signed with an attacker's RSA key (and one claiming RS256 but MACed
        # with our secret) must not pass as HS256.
        "RS256 attacker key": _forge(good, key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
                                     alg="RS256"),
        "RS256 header, HS MAC": _swap_alg(_forge(good), "RS256"),
    }
    for name, token in attacks.items():
        status, body = await api.request("GET", "/api/me", headers={"Authorization": f"Bearer {token}"})
        assert status == 401, name
        assert body["error"]["code"] in {"token_invalid", "token_expired"}, name
    status, _ = await api.request("GET", "/api/me", user)
    assert status == 200


async def test_logout_revokes_access_and_refresh(api: Api) -> None:
    user = await api.register("caregiver")
    status, _ = await api.request("POST", "/api/auth/logout", user)
    assert status == 204
    status, body = await api.request("GET", "/api/me", user)
    assert status == 401 and body["error"]["code"] == "session_revoked"
    status, body = await api.request("POST", "/api/auth/refresh", json={"refresh_token": user.refresh_token})
    assert status == 401


async def test_profile_get_and_patch(api: Api) -> None:
    user = await api.register("patient")
    status, body = await api.request("PATCH", "/api/me", user, json={
        "name": "Ana Maria", "phone": "+351912345678", "timezone": "Europe/Lisbon", "language": "pt-PT"})
    assert status == 200 and body["timezone"] == "Europe/Lisbon" and body["phone"] == "+351912345678"
    for bad in ({"timezone": "Mars/Olympus"}, {"phone": "12345"}, {"email": "new@example.org"},
                {"avatar_id": "nope"}, {"language": "Portuguese!"}):
        status, err = await api.request("PATCH", "/api/me", user, json=bad)
        assert status == 422, bad
        assert set(err["error"]) == {"code", "message", "details"}
    status, body = await api.request("GET", "/api/me", user)
    assert body["name"] == "Ana Maria" and body["language"] == "pt-PT" and body["email"] == user.email


async def test_password_change_revokes_other_sessions(api: Api) -> None:
    user = await api.register("patient")
    status, other = await api.request("POST", "/api/auth/login", json={"email": user.email, "password": PASSWORD})
    assert status == 200
    other_sock = await api.socket(token=other["access_token"])
    status, body = await api.request("POST", "/api/me/password", user, json={
        "current_password": "wrong-password-1", "new_password": "another-long-passphrase"})
    assert status == 403 and body["error"]["code"] == "invalid_credentials"
    status, _ = await api.request("POST", "/api/me/password", user, json={
        "current_password": PASSWORD, "new_password": "another-long-passphrase"})
    assert status == 204
    # This session goes on; the other login is over, its live socket dropped.
    assert (await api.request("GET", "/api/me", user))[0] == 200
    status, _ = await api.request("GET", "/api/me", headers={"Authorization": f"Bearer {other['access_token']}"})
    assert status == 401
    for _ in range(50):
        if not other_sock.client.connected:
            break
        await asyncio.sleep(0.05)
    assert not other_sock.client.connected
    status, _ = await api.request("POST", "/api/auth/login", json={"email": user.email, "password": PASSWORD})
    assert status == 401
    status, _ = await api.request("POST", "/api/auth/login", json={"email": user.email,
                                                                  "password": "another-long-passphrase"})
    assert status == 200
    revoked = await AuthSession.find(AuthSession.revoked_reason == "password_changed").count()
    assert revoked == 1
