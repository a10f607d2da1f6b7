"""Accounts, sessions, care-team links and paired devices written straight into the store.

Registering through REST hashes a password with Argon2 for every account (a good fraction of a
second of CPU each), which would dominate a bench needing hundreds of them; everything measured
still goes through the servers. The servers must run with ``SECRET`` as their JWT secret
(``server_env``) to accept the access tokens issued here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from beanie import PydanticObjectId

SECRET = "bench-secret-" + "b" * 40
PASSWORD = "bench-passphrase-long-42"


@dataclass(frozen=True)
class Account:
    id: str
    token: str  # an access token, valid for an hour
    role: str


def server_env(store_url: str, db: str) -> dict[str, str]:
    """The settings a server needs to serve the seeded accounts."""
    return {"HEALTHMATE_MONGODB_URL": store_url, "HEALTHMATE_MONGODB_DB": db, "HEALTHMATE_JWT_SECRET": SECRET}


class Seeder:
    """``async with Seeder(url, db) as seed``: ``await seed.users(...)``, ``seed.link(...)``, ``seed.devices(...)``."""

    def __init__(self, store_url: str, db: str) -> None:
        self.store_url, self.db = store_url, db
        self._made = 0

    # The server's modules are imported when seeding, not with this module: load-generator processes
    # import the benches that import this module, and need none of them.
    async def __aenter__(self) -> Seeder:
        from server.app import DOCUMENTS
        from server.care.security import TokenService, hash_password
        from server.infra.store import init_documents, make_client

        self.client: Any = make_client(self.store_url)
        await init_documents(self.client, self.db, DOCUMENTS)
        self.tokens = TokenService(SECRET, "healthmate", 3600, 7200)
        self.password_hash = await hash_password(PASSWORD)  # one Argon2 run for all of them
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def users(self, role: str, count: int) -> list[Account]:
        """``count`` new users of ``role``, each with a session and an access token."""
        from server.care.documents import AuthSession, User
        from server.core.documents import utcnow

        first = self._made
        self._made += count
        users = [User(id=PydanticObjectId(), email=f"{role}{first + i}@bench.example.org",
                      password_hash=self.password_hash, name=f"Bench {role} {first + i}", role=role,  # type: ignore[arg-type]
                      verified=role == "clinician")  # a clinician an organisation vouches for
                 for i in range(count)]
        sessions = [AuthSession(id=PydanticObjectId(), user_id=u.id, current_jti="bench",  # type: ignore[arg-type]
                                expires_at=utcnow() + timedelta(days=1)) for u in users]
        for i in range(0, count, 1000):
            await User.insert_many(users[i:i + 1000])
            await AuthSession.insert_many(sessions[i:i + 1000])
        return [Account(str(u.id), self.tokens.issue("access", str(u.id), str(s.id), role=role)[0], role)
                for u, s in zip(users, sessions, strict=True)]

    async def link(self, pairs: list[tuple[Account, Account]]) -> None:
        """Care-team links, each (patient, member)."""
        from server.care.documents import Link


        links = [Link(id=Link.key(PydanticObjectId(p.id), PydanticObjectId(m.id)), patient_id=PydanticObjectId(p.id),
                      member_id=PydanticObjectId(m.id), member_role=m.role) for p, m in pairs]  # type: ignore[arg-type]
        for i in range(0, len(links), 1000):
            await Link.insert_many(links[i:i + 1000])

    async def devices(self, patients: list[Account], kind: str = "ecg") -> list[str]:
        """One paired device per patient; their credentials (what a device connects with)."""
        from devices.registry import Device, new_credential


        made, credentials = [], []
        for p in patients:
            device_id = PydanticObjectId()
            credential, digest = new_credential(device_id)
            made.append(Device(id=device_id, patient_id=PydanticObjectId(p.id), kind=kind,  # type: ignore[arg-type]
                               serial=f"BENCH-{device_id}", model="bench", credential_hash=digest,
                               paired_by=PydanticObjectId(p.id)))
            credentials.append(credential)
        for i in range(0, len(made), 1000):
            await Device.insert_many(made[i:i + 1000])
        return credentials
