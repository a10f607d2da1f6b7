"""A prober sending malformed or forged JWTs learns only "not valid": the refusal (REST and a Socket.IO
connect) carries the uniform message, never the JWT library's own wording (which check failed, which
byte did not decode, which claim is missing)."""

from __future__ import annotations

import json

import jwt

from tests.conftest import TEST_SECRET
from tests.helpers import Api, connect_refused

MALFORMED = ["x", "a.b", "abc.def.ghi", "eyJhbGciOiJIUzI1NiJ9.e30.", "eyJhbGciOiJub25lIn0.e30.",
             jwt.encode({"sub": "1"}, "k" * 40, algorithm="HS256"),  # someone else's key
             jwt.encode({"sub": "1", "aud": "healthmate:access", "iss": "healthmate"}, TEST_SECRET)]  # claims missing


def _library_says(token: str) -> str:
    try:
        jwt.decode(token, TEST_SECRET, algorithms=["HS256"], audience="healthmate:access", issuer="healthmate",
                   options={"require": ["exp", "iat", "sub", "jti", "aud", "iss", "sid"]})
    except jwt.PyJWTError as exc:
        return str(exc)
    raise AssertionError(f"{token} decodes")


async def test_malformed_tokens_get_the_uniform_message_only(api: Api) -> None:
    for token in MALFORMED:
        wording = _library_says(token)
        status, body = await api.request("GET", "/api/me", headers={"Authorization": f"Bearer {token}"})
        refused = await connect_refused(api.base_url, {"token": token})
        for error in (body, refused):
            assert error["error"] == {"code": "token_invalid", "message": "The access token is not valid",
                                      "details": {}}, (token, error)
            assert wording not in json.dumps(error), token
        assert status == 401
    status, body = await api.request("POST", "/api/auth/refresh", json={"refresh_token": "abc.def.ghi"})
    assert status == 401 and body["error"] == {"code": "token_invalid", "message": "The refresh token is not valid",
                                               "details": {}}
