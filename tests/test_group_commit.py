"""The group commit (server/infra/group_commit.py): concurrent writes share store commands, each caller is
answered with its own outcome, and a SIGKILL of the store during group commits under load loses no
acknowledged write and stores none that was refused."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from pymongo.errors import DuplicateKeyError

from server.infra.embedded_store import EmbeddedStore
from server.infra.group_commit import GroupCommit
from server.infra.store import make_client

WRITERS = 40
TAKEN = 7  # ids already stored: writing them again is refused (duplicate key), the stored document kept


async def test_acknowledged_group_commits_survive_sigkill_and_refused_ones_are_not_stored(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    await store.start()
    client = make_client(store.url, serverSelectionTimeoutMS=20000)
    coll = client.durability.readings
    await coll.insert_many([{"_id": -k, "payload": "original"} for k in range(1, TAKEN * 1000)])
    commits = GroupCommit()
    acknowledged: list[int] = []
    refused: list[int] = []
    cut_off: list[int] = []
    killed = asyncio.Event()

    async def writer(w: int) -> None:
        for i in range(w, 1_000_000, WRITERS):
            if killed.is_set():
                return
            doc_id = -(i // WRITERS % (TAKEN * 1000 - 1) + 1) if i % TAKEN == 0 else i  # one write in 7 is refused
            try:
                await commits.insert(coll, [{"_id": doc_id, "payload": f"writer {w}"}])
            except DuplicateKeyError:
                refused.append(doc_id)
                continue
            except Exception:
                cut_off.append(doc_id)  # the store died under it: neither acknowledged nor refused
                return
            acknowledged.append(doc_id)

    writers = [asyncio.create_task(writer(w)) for w in range(WRITERS)]
    while len(acknowledged) < 1000:
        await asyncio.sleep(0.01)
    assert store.proc is not None
    os.kill(store.proc.pid, signal.SIGKILL)
    killed.set()
    await asyncio.wait_for(asyncio.gather(*writers), 120)
    for _ in range(300):  # the supervisor brings the store back on the same port
        if store.crashes == 1 and store.healthy:
            break
        await asyncio.sleep(0.1)
    assert store.healthy
    try:
        # Writes were shared: fewer store commands than documents (one each without the group commit).
        assert commits.batches * 2 < commits.documents, (commits.batches, commits.documents)
        assert refused
        stored = {d["_id"]: d["payload"] async for d in coll.find({})}
        missing = [i for i in acknowledged if i not in stored]
        assert not missing, f"{len(missing)} acknowledged writes lost of {len(acknowledged)}"
        overwritten = [i for i in refused if stored.get(i) != "original"]
        assert not overwritten, f"{len(overwritten)} refused writes stored"
    finally:
        await client.close()
        await store.stop()


async def test_off_sends_one_command_per_write_and_a_batch_refuses_only_its_bad_document(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    await store.start()
    client = make_client(store.url, serverSelectionTimeoutMS=20000)
    coll = client.grouping.rows
    commits = GroupCommit()
    try:
        await coll.insert_one({"_id": 0})
        outcomes = await asyncio.gather(*(commits.insert(coll, [{"_id": i}]) for i in range(50)),
                                        return_exceptions=True)
        assert isinstance(outcomes[0], DuplicateKeyError) and outcomes[1:] == [None] * 49
        assert commits.batches == 1 and await coll.count_documents({}) == 50
        await asyncio.gather(*(commits.insert(coll, [{"_id": i}], ignore_duplicates=True) for i in range(45, 55)))
        assert await coll.count_documents({}) == 55
        commits.enabled = False
        before = commits.batches
        await asyncio.gather(*(commits.insert(coll, [{"_id": i}]) for i in range(100, 110)))
        assert commits.batches == before and await coll.count_documents({}) == 65
    finally:
        await client.close()
        await store.stop()
