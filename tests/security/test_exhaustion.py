"""No cheap exhaustion: a flood of logins (each one an Argon2 hash of 64 MiB and tens of milliseconds of CPU)
is worked through one hash per core at a time with a bounded queue, the rest refused ``busy`` at once, so the
server keeps answering everyone else and its memory stays bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.infra.embedded_store import EmbeddedStore, free_port
from tests.helpers import PASSWORD, Api, ServerProcess, process_env
from tests.login_storm import login_plan, storm

GROWTH_BOUND_MB = 200  # generous: one Argon2 hash per core (2 x 64 MiB here) plus the connections


@pytest.mark.timeout(300)  # 60 accounts registered (an Argon2 hash each) and the storm, on a shared machine
async def test_300_concurrent_logins_leave_the_server_responsive_and_its_memory_bounded(
        store: EmbeddedStore, tmp_path: Path) -> None:
    server = ServerProcess(process_env(store.url, tmp_path, trust_forwarded="true", log_level="WARNING"), free_port())
    await server.start()
    try:
        async with Api(server.url) as api:
            users = [await api.register("caregiver") for _ in range(60)]
        assert server.proc is not None
        result = await storm(server.url, server.proc.pid, login_plan([u.email for u in users], PASSWORD, 300),
                             users[0].access_token)
    finally:
        await server.stop()
    print(f"login storm: {dict(result.outcomes)}; RSS {result.rss_before_mb:.0f} MB before, peak "
          f"{result.peak_mb:.0f} MB (+{result.growth_mb:.0f}); {len(result.probes)} probes answered "
          f"during {result.storm_s:.1f} s")
    # /healthz and an authenticated event answered meanwhile (each within the 10 s liveness bound).
    assert {what for what, _ in result.probes} == {"healthz", "sys:ping"}
    # Every login was answered: checked (200 or 401), or refused at once as busy, with Retry-After.
    assert sum(result.outcomes.values()) == 300
    assert set(result.outcomes) <= {"200", "401 invalid_credentials", "503 busy"}, (
        result.outcomes, "".join(server.output[-80:]))
    assert result.outcomes["503 busy"] > 0 and result.retry_after_missing == 0
    assert result.outcomes["200"] > 0 and result.outcomes["401 invalid_credentials"] > 0
    assert result.growth_mb < GROWTH_BOUND_MB, result
