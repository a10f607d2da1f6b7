"""Every query the project's code sent while the tests ran (tests/query_plans.py) reads no more than it must on
the embedded store. The store plans a filter on an index when the index's leading fields cover every field of it
(``explain`` names that index); otherwise it looks up the first field, in the filter's order, whose clause alone
rides an index (``_id`` included) and checks the rest on each document that clause matches (``explain`` says
``COLLSCAN`` then, though it is not one); with no such field, or an operator at the top (``$or``, ``$and``), it
reads the whole collection. So a query passes
when it is planned on an index, or its looked-up clause names ``_id`` or values of a unique index; the others
are listed below with what bounds them. Run after every other test (tests/conftest.py), so that it judges the
queries of the whole suite; run alone, those of the actions it plays."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from server.app import DOCUMENTS
from server.care.uploads import BUCKET as UPLOADS
from server.core.documents import utcnow
from server.infra.embedded_store import EmbeddedStore
from server.infra.store import GridBucket, init_documents, make_client
from server.vitals.model_registry import BUCKET as MODELS
from signaling.recording import RECORDINGS
from tests.helpers import Api
from tests.query_plans import QUERIES, Query

DB = "hm_query_plans"
# Read whole, each small by construction: the applied migrations, the model versions trained, the store
# watchdog's one document.
WHOLE = {"migrations", "model_versions", "healthmate_watchdog"}
# Migrations run once per data dir, and read what they rewrite.
ONCE = "server/infra/migrations.py"
# Functions whose query is looked up by a clause matching more than one document, and what bounds how many.
BOUNDED = {
    "server/alerts/escalation.py (escalate_due)": "the open alerts (status open): those nobody has acknowledged yet",
    "server/care/linking.py (create_code)": "the patient's link codes: one per invitation they made",
    "server/overview.py (_latest_bp)": "all of a patient's readings, for a patient with none in the last of BP_SLICES",
    "server/meds/delivery.py (redeliver)": "the reminded doses (not confirmed or missed yet): a dead process's claim",
    "server/alerts/notifications.py (notified)": "the patient's notifications, for a dose of a dead process's claim",
    "server/alerts/notifications.py (mark_read)": "the user's notifications, to mark them all read",
    "server/meds/planning.py (_plan_again)": "a medication's doses, when it or the patient's time zone changes",
    "server/meds/medications.py (drawers)": "the patient's medications",
    "server/care/orgs.py (standing)": "the member's links: the patients they care for",
    "server/care/orgs.py (members)": "an organisation's invitations",
    "devices/registry.py (pair)": "the patient's devices",
    "devices/box_service.py (boxes_of)": "the patients' devices",
    "devices/mqtt_broker.py (sync)": "every active device: the broker's password file lists them all",
    "signaling/service.py (_on_link_changed)": "the calls under way (state ringing, reconnecting or active)",
    "signaling/service.py (ongoing)": "the calls under way",
    "server/alerts/push.py (register)": "the user's push registrations, one per device",
    "server/alerts/push.py (unregister)": "the user's push registrations",
    "server/alerts/push.py (ring)": "the user's push registrations",
    "server/alerts/push.py (cancel_ring)": "a call's pushes",
    "server/alerts/push.py (stats)": "the admin's statistics: every push waiting and every outcome kept",
    "server/alerts/push_outbox.py (_failed)": "the pushes waiting for a registration found dead",
    "server/alerts/push_outbox.py (stop)": "the pushes waiting (done ones are removed), at shutdown",
    "server/alerts/push_outbox.py (_prune)": "the rung calls kept for their cancel",
    "server/alerts/device_delivery.py (sweep)": "the watches due, which it claims",
    "server/vitals/fhir.py (bp_bundle)": "the patient's readings: the export is all of them",
    "server/vitals/bp_history.py (store_cohort)": "every patient's readings of the window: the training cohort",
    "server/demo.py (ensure_accounts)": "the organisations (a handful), as the demo starts",
    "server/demo.py (device_credential)": "the demo patient's devices",
}


async def plan_of(db: AsyncDatabase[Any], collection: str, filter_: dict[str, Any],
                  sort: dict[str, Any] | None = None) -> dict[str, Any]:
    explain = {"find": collection, "filter": filter_, **({"sort": sort} if sort else {})}
    return (await db.command({"explain": explain, "verbosity": "queryPlanner"}))["queryPlanner"]["winningPlan"]


def index_of(plan: dict[str, Any]) -> str | None:
    """The index a plan looks documents up on (None: a collection scan)."""
    while plan:
        if plan.get("stage") == "IXSCAN":
            return str(plan["indexName"])
        if plan.get("stage") == "IDHACK":
            return "_id_"
        plan = plan.get("inputStage") or {}
    return None


async def verdict(db: AsyncDatabase[Any], query: Query, unique: dict[str, set[str]]) -> str | None:
    """None when the query reads only what it must, else what it reads."""
    if query.collection in WHOLE or query.site.startswith(ONCE) or BOUNDED.keys() & set(query.functions):
        return None
    # {"$eq": v} is v (GridFS reads its chunks so): the store looks it up as such, though explain says COLLSCAN.
    filter_ = {k: v["$eq"] if isinstance(v, dict) and list(v) == ["$eq"] else v for k, v in query.filter.items()}
    if index_of(await plan_of(db, query.collection, filter_, query.sort)):
        return None
    if any(field.startswith("$") for field in filter_):  # ($or, $and: no clause is looked up)
        return "the whole collection"
    for field, clause in filter_.items():
        if field.startswith("$") or not index_of(await plan_of(db, query.collection, {field: clause})):
            continue
        if (field == "_id" or field in unique[query.collection]) and (
                not isinstance(clause, dict) or set(clause) == {"$in"}):
            return None  # one document at most, for each value given
        return f"every document of its {field}"
    return "the whole collection"


async def test_every_query_of_the_server_reads_only_what_it_must(api: Api, store: EmbeddedStore) -> None:
    # The alert's way, so that the test has queries of its own to judge when it runs alone.
    patient, carer = await api.register("patient"), await api.register("caregiver")
    await api.link(patient, carer)
    c_sock = await api.socket(carer)
    await (await api.socket(patient)).ok("bp:add", {"systolic": 192, "diastolic": 124, "pulse": 101,
                                                    "measured_at": utcnow().isoformat()})
    alert = (await c_sock.events.wait("alert:new", 1))[-1]
    await c_sock.ok("alert:ack", {"alert_id": alert["id"]})
    assert (await api.request("GET", "/api/overview", carer))[0] == 200

    client = make_client(store.url)
    try:
        await init_documents(client, DB, DOCUMENTS)  # every collection, its indexes created
        db = client[DB]
        for bucket in (UPLOADS, RECORDINGS, MODELS):
            await GridBucket(db, bucket).ready()
        unique = {doc.get_collection_name(): {next(iter(ix["key"])) async for ix in await db[doc.get_collection_name()]
                                              .list_indexes() if ix.get("unique") and len(ix["key"]) == 1}
                  for doc in DOCUMENTS}
        found = []
        for query in list(QUERIES.queries.values()):
            reads = await verdict(db, query, unique)
            if reads:
                found.append(f"{query.collection} {query.filter}: reads {reads} ({query.site})")
    finally:
        await client.drop_database(DB)
        await client.close()
    print(f"{len(QUERIES.queries)} query shapes judged")
    assert any(q.collection == "alerts" for q in QUERIES.queries.values())  # the recorder saw the alert's way
    assert not found, "queries reading more than they return:\n" + "\n".join(found)
