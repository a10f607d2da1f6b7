"""Heavy reads are bounded per user: a FHIR export of 50,000 readings, or a month of per-minute analyses,
asked for again and again in parallel by one user, runs one at a time per user and a few times a minute
(``too_many_requests``, 429, Retry-After, for the rest), and the export is streamed as it is read rather than
built whole in memory. Other users, and light reads, are not held up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from beanie import PydanticObjectId

from server.app import SERVER
from server.core.documents import iso, utcnow
from server.infra.embedded_store import EmbeddedStore
from server.vitals.documents import BPReading
from tests.conftest import store_of_tests
from tests.helpers import Api, User

READINGS = 50_000


@pytest.fixture(scope="module")
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedStore]:
    """This module's own store, thrown away whole at its end: dropping a database of 50,000 readings keeps
    SecantusDB from answering anyone for longer than the watchdog's bound (tests/conftest.py)."""
    async with store_of_tests(tmp_path_factory, "heavy-store") as s:
        yield s


@pytest.fixture(autouse=True)
def _test_databases_dropped() -> None:
    """(Not here: see ``store``.)"""


async def _seed_readings(patient: User, count: int) -> None:
    """``count`` readings, a minute apart, written straight into the store (the documents the API writes)."""
    pid, start = PydanticObjectId(patient.id), utcnow() - timedelta(days=400)
    reading = BPReading(patient_id=pid, systolic=120, diastolic=80, measured_at=start, category="normal",
                        entered_by=pid, entered_by_role="patient").model_dump(by_alias=True, exclude={"id"})
    coll = BPReading.get_pymongo_collection()
    for first in range(0, count, 10_000):
        await coll.insert_many([{**reading, "systolic": 120 + i % 20, "measured_at": start + timedelta(minutes=i)}
                                for i in range(first, min(first + 10_000, count))])


def _refused(status: int, body: Any) -> bool:
    return (status == 429 and body["error"]["code"] == "too_many_requests"
            and body["error"]["details"]["retry_after_s"] > 0)


async def _clinic(api: Api) -> tuple[User, User, User]:
    patient, clinician, other = await api.register("patient"), await api.register("caregiver"), \
        await api.register("caregiver")
    await api.link(patient, clinician)
    await api.link(patient, other)
    return patient, clinician, other


@pytest.mark.timeout(300)  # 50,000 readings written and exported on a shared machine
async def test_parallel_fhir_exports_of_50000_readings_run_one_at_a_time_streamed(api: Api) -> None:
    budget = api.app[SERVER].settings.heavy_reads_per_minute  # type: ignore[index]
    patient, clinician, _ = await _clinic(api)
    await _seed_readings(patient, READINGS)
    url = f"{api.base_url}/api/patients/{patient.id}/bp/fhir"

    async def export(http: aiohttp.ClientSession) -> tuple[int, Any, Any]:
        async with http.get(url, headers=clinician.auth) as resp:
            return resp.status, resp.headers, await resp.read()

    async with aiohttp.ClientSession() as http:
        replies = await asyncio.gather(*(export(http) for _ in range(budget + 4)))
    done = [(headers, body) for status, headers, body in replies if status == 200]
    assert 1 <= len(done) <= budget  # unbounded, every one of them would run
    assert all(_refused(status, json.loads(body)) for status, _, body in replies if status != 200), \
        [status for status, _, _ in replies]
    # What ran is the whole export, one Observation per reading, oldest first, streamed: sent in chunks as it
    # is read, without a length known up front.
    headers, body = done[0]
    assert headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in headers
    bundle = json.loads(body)
    assert bundle["resourceType"] == "Bundle" and len(bundle["entry"]) == READINGS
    assert bundle["entry"][0]["resource"]["effectiveDateTime"] < bundle["entry"][-1]["resource"]["effectiveDateTime"]


async def test_exports_per_user_per_minute_are_capped_and_others_go_on(api: Api) -> None:
    budget = api.app[SERVER].settings.heavy_reads_per_minute  # type: ignore[index]
    patient, clinician, other = await _clinic(api)
    await _seed_readings(patient, 10)
    path = f"/api/patients/{patient.id}/bp/fhir"
    statuses = [(await api.request("GET", path, clinician))[0] for _ in range(budget)]
    assert statuses == [200] * budget
    assert _refused(*await api.request("GET", path, clinician))
    status, bundle = await api.request("GET", path, other)  # another user is not held up
    assert status == 200 and len(json.loads(bundle)["entry"]) == 10


async def test_parallel_month_long_aggregations_are_capped_light_ones_are_not(api: Api) -> None:
    budget = api.app[SERVER].settings.heavy_reads_per_minute  # type: ignore[index]
    patient, clinician, _ = await _clinic(api)
    end = utcnow()
    month = {"every": "minute", "from": iso(end - timedelta(days=31)), "to": iso(end)}
    hour = {"every": "minute", "from": iso(end - timedelta(hours=1)), "to": iso(end)}
    path = f"/api/patients/{patient.id}/analyses"
    replies = await asyncio.gather(*(api.request("GET", path, clinician, params=month) for _ in range(budget + 6)))
    assert 1 <= [s for s, _ in replies].count(200) <= budget
    assert all(_refused(status, body) for status, body in replies if status != 200), [s for s, _ in replies]
    # An hour's aggregates are light: asked for in parallel, every one is answered.
    replies = await asyncio.gather(*(api.request("GET", path, clinician, params=hour) for _ in range(budget + 6)))
    assert {s for s, _ in replies} == {200}
