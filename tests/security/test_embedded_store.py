"""The embedded store runs with --auth: another local user or process that finds its port can neither read
nor write the data without the credential kept 0600 in a 0700 data dir."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from server.infra.embedded_store import EmbeddedStore


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_store_refuses_clients_without_its_credential(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "data")
    url = await store.start()
    try:
        async with AsyncMongoClient(url) as owner:
            await owner.healthmate.users.insert_one({"email": "maria@example.org"})
        bare = f"mongodb://127.0.0.1:{store.port}/?directConnection=true"
        wrong = f"mongodb://healthmate:guess@127.0.0.1:{store.port}/?directConnection=true&authSource=admin"
        for attacker in (bare, wrong):
            async with AsyncMongoClient(attacker, serverSelectionTimeoutMS=3000) as client:
                with pytest.raises(PyMongoError):
                    await client.healthmate.users.find_one()
                with pytest.raises(PyMongoError):
                    await client.healthmate.users.insert_one({"email": "mallory@example.org"})
        assert _mode(tmp_path / "data") == 0o700 and _mode(store.path) == 0o700
        assert _mode(store.credential_path) == 0o600 and _mode(store.log_path) == 0o600
    finally:
        await store.stop()
    # A restart reads the kept credential: the same data, still behind it.
    again = EmbeddedStore(tmp_path / "data")
    url = await again.start()
    try:
        async with AsyncMongoClient(url) as owner:
            assert [u["email"] async for u in owner.healthmate.users.find()] == ["maria@example.org"]
    finally:
        await again.stop()
