"""Passwords (Argon2id, run under a bounded concurrency and queue) and JWTs (HS256, algorithm pinned on decode)."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from server.core.errors import ApiError, unauthorized

_hasher = PasswordHasher()  # argon2id, library defaults (RFC 9106 low-memory profile)
# Verified against when the account does not exist, so a miss costs as much as a hit.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))
MIN_PASSWORD_LENGTH = 10
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_RE = re.compile(rf"^[^@\s]{{1,64}}@{_LABEL}(?:\.{_LABEL})+$")


@cache
def common_passwords() -> frozenset[str]:
    text = resources.files("server.care").joinpath("common_passwords.txt").read_text()
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip())


def normalise_email(value: str) -> str:
    """The one spelling of an address, an account's or a contact's: trimmed and lower-cased (logging in finds
    the account whatever the capitals; a contact's address compares equal to the same person's account).
    A local part of at most 64 characters (any but ``@`` and spaces, so ``josé@...`` passes) and a domain of
    letters, digits and inner hyphens. ``ValueError`` otherwise (a pydantic validator's refusal)."""
    email = value.strip().lower()
    if len(email) > 254 or not EMAIL_RE.match(email):
        raise ValueError("email is not a valid address")
    return email


def password_problems(password: str, email: str) -> list[str]:
    problems = []
    if len(password) < MIN_PASSWORD_LENGTH:
        problems.append(f"must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > 256:
        problems.append("must be at most 256 characters")
    lowered = password.lower()
    if lowered in common_passwords():
        problems.append("is too common")
    if lowered in {email.lower(), email.split("@")[0].lower()}:
        problems.append("must not be your email")
    return problems


def check_password(password: str, email: str) -> None:
    problems = password_problems(password, email)
    if problems:
        raise ApiError("weak_password", "The password " + "; ".join(problems), 422,
                       {"field": "password", "problems": problems})


def _verify(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


# Each Argon2 hash takes 64 MiB and its CPU time (4 lanes): one at a time per core, in the process's own threads.
ARGON2_WORKERS = os.cpu_count() or 1
_ARGON2_THREADS = ThreadPoolExecutor(ARGON2_WORKERS, thread_name_prefix="argon2")


class PasswordWork:
    """Argon2 work with a bounded queue: as many at once as there are cores (the threads above), at most
    ``queue`` more waiting; past that, ``busy`` (503, Retry-After) at once, so a flood of logins costs a
    bounded amount of memory and leaves the event loop free for everyone else."""

    def __init__(self, queue: int) -> None:
        self.capacity = ARGON2_WORKERS + queue
        self.pending = 0

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self.pending >= self.capacity:
            raise ApiError("busy", "The server is busy; try again in a moment", 503, {"retry_after_s": 1},
                           headers={"Retry-After": "1"})
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(_ARGON2_THREADS, fn, *args)
        finally:
            self.pending -= 1

    async def hash(self, password: str) -> str:
        return await self._run(_hasher.hash, password)  # type: ignore[no-any-return]

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches; an account that does not exist (``None``) costs as much as one that does."""
        return await self._run(_verify, password_hash, password)  # type: ignore[no-any-return]


_TOOLS = PasswordWork(queue=1000)  # for the CLI, the demo and benches (not a request path)


async def hash_password(password: str) -> str:
    return await _TOOLS.hash(password)


TokenKind = Literal["access", "refresh"]


@dataclass(frozen=True)
class TokenClaims:
    sub: str
    sid: str
    jti: str
    role: str | None
    exp: int


class TokenService:
    """Issues and verifies access and refresh JWTs. The two kinds have different audiences,
    so one can never be used as the other; only HS256 is accepted on decode."""

    ALGORITHM = "HS256"

    def __init__(self, secret: str, issuer: str, access_ttl_s: int, refresh_ttl_s: int) -> None:
        self._secret = secret
        self.issuer = issuer
        self.ttl = {"access": access_ttl_s, "refresh": refresh_ttl_s}

    def _aud(self, kind: TokenKind) -> str:
        return f"{self.issuer}:{kind}"

    def issue(self, kind: TokenKind, sub: str, sid: str, role: str | None = None,
              jti: str | None = None) -> tuple[str, TokenClaims]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": self._aud(kind), "sub": sub, "sid": sid,
            "jti": jti or secrets.token_urlsafe(12), "iat": now, "exp": now + self.ttl[kind],
        }
        if role:
            claims["role"] = role
        token = jwt.encode(claims, self._secret, algorithm=self.ALGORITHM)
        return token, TokenClaims(sub, sid, claims["jti"], role, claims["exp"])

    def decode(self, kind: TokenKind, token: str) -> TokenClaims:
        if not isinstance(token, str) or not token or len(token) > 4096:
            raise unauthorized("A token is required", "token_missing")
        try:
            c = jwt.decode(
                token, self._secret, algorithms=[self.ALGORITHM], audience=self._aud(kind), issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "jti", "aud", "iss", "sid"]}, leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized(f"The {kind} token has expired", "token_expired") from None
        except jwt.PyJWTError:  # the library's wording would tell a prober which check failed
            raise ApiError("token_invalid", f"The {kind} token is not valid", 401) from None
        return TokenClaims(str(c["sub"]), str(c["sid"]), str(c["jti"]), c.get("role"), int(c["exp"]))
