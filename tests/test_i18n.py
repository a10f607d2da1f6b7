"""Notifications in the user's language (server/core/i18n.py): the catalogs complete and consistent with the
code, the fallback along a language tag to English, and, on a real server over real sockets, caregivers told of
the same crisis alert and of the same missed dose each in the language of their profile."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from string import Formatter
from typing import Any

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from beanie import PydanticObjectId

from server.care.accounts import _languages, languages
from server.core.documents import utcnow
from server.core.i18n import DOMAIN, LOCALE_DIR, Text, render, sentences
from server.infra.store import COMMANDS
from server.meds.documents import DoseEvent
from tests.alert_clients import crisis
from tests.helpers import Api, User
from tests.test_medications import create

ROOT = Path(__file__).resolve().parent.parent


def catalog(language: str) -> Catalog:
    with (LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po").open("rb") as po:
        return read_po(po, locale=language)


def placeholders(pattern: str) -> set[str]:
    return {name for _, name, _, _ in Formatter().parse(pattern) if name is not None}


def test_every_message_of_the_code_is_in_english_and_spanish_with_the_same_placeholders() -> None:
    with (ROOT / "babel.cfg").open() as cfg:  # the extraction `make messages` runs
        method_map, options_map = parse_mapping_cfg(cfg)
    in_code = {msg[2] for top in ("server", "signaling", "devices", "media")
               for msg in extract_from_dir(ROOT / top, method_map, options_map)}
    assert "alert.bp_crisis.title" in in_code and "dose.missed.title" in in_code
    en, es = ({m.id: m for m in catalog(lang) if m.id} for lang in ("en", "es"))
    assert set(en) == set(es) == in_code, (set(en) ^ in_code, set(es) ^ in_code)
    for msgid, english in en.items():
        spanish = es[msgid]
        assert english.string and spanish.string and not english.fuzzy and not spanish.fuzzy, msgid
        assert placeholders(english.string) == placeholders(spanish.string), msgid


def test_a_language_tag_falls_back_to_its_language_then_english() -> None:
    bp = Text("alert.bp_crisis.body", systolic=185.0, diastolic=121.5)
    assert render(bp, "en") == "Blood pressure 185/121.5 mmHg"
    assert render(bp, "es") == "Presión arterial 185/121,5 mmHg"  # numbers as the language writes them
    assert render(bp, "es-MX").startswith("Presión arterial 185/121.5")  # es_MX's own decimal point, es' text
    for unknown in ("zz", "zz-ZZ", "xyz-Latn", None):
        assert render(bp, unknown) == "Blood pressure 185/121.5 mmHg", unknown
    assert render("Take your pills", "es") == "Take your pills"  # a plain string is itself
    gone = Text("device.disconnected_for.body", kind=Text("device.kind.bp_cuff"), duration=timedelta(minutes=7))
    assert render(gone, "es").startswith("El dispositivo (tensiómetro) no da señales de vida desde hace 7 min.")
    assert render(Text("box.wrong_drawer.body", drawers=[2, 3]), "en") == "Your dose is in drawer 2, 3"
    assert render(Text("box.wrong_drawer.body", drawers=[2, 3]), "es") == "Tu dosis está en el cajón 2 y 3"
    told = sentences([Text("triage.fainting"), "Call now."])
    assert render(told, "es") == "Un desmayo (pérdida de conocimiento) debe revisarse de inmediato. Call now."
    # Stored (an alert keeps its texts) and read back, it renders the same.
    assert render(Text.model_validate(told.model_dump()), "es") == render(told, "es")


async def speaking(api: Api, patient: User, languages: list[str]) -> list[User]:
    """Caregivers linked to ``patient``, each with a profile in one of ``languages``."""
    carers = []
    for language in languages:
        carer = await api.register("caregiver")
        status, me = await api.request("PATCH", "/api/me", carer, json={"language": language})
        assert status == 200 and me["language"] == language, me
        await api.link(patient, carer)
        carers.append(carer)
    return carers


async def notes(api: Api, user: User, kind: str) -> list[dict[str, Any]]:
    """The user's stored notifications of ``kind``, once there is one (alert notifications are stored in the
    background after the alert is pushed, and have no live event of their own)."""
    for _ in range(200):
        _, page = await api.request("GET", "/api/notifications", user)
        found = [n for n in page["items"] if n["kind"] == kind]
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind} notification for {user.email}")


async def test_a_crisis_alert_is_notified_to_each_caregiver_in_their_language(api: Api) -> None:
    patient = await api.register("patient")
    spanish, mexican, english, unknown = await speaking(api, patient, ["es", "es-MX", "en", "zz"])
    watcher = await api.socket(spanish)
    await (await api.socket(patient)).ok("bp:add", crisis())
    (alert,) = await watcher.events.wait("alert:new")
    assert alert["title"] == "Hypertensive crisis"  # the alert itself, one for all, in English
    for user, title in ((spanish, "Crisis hipertensiva"), (mexican, "Crisis hipertensiva"),
                        (english, "Hypertensive crisis"), (unknown, "Hypertensive crisis")):
        (note,) = await notes(api, user, "alert")
        assert note["title"] == title and note["data"]["alert_id"] == alert["id"], (user.email, note)
    (note,) = await notes(api, spanish, "alert")
    assert note["body"].startswith("Presión arterial 1")


async def test_a_missed_dose_is_notified_live_to_each_caregiver_in_their_language_as_it_changes(api: Api) -> None:
    patient = await api.register("patient")
    spanish, english = await speaking(api, patient, ["es", "en"])
    es_sock, en_sock, p_sock = await api.socket(spanish), await api.socket(english), await api.socket(patient)
    med = await create(p_sock, patient.id, schedule={"times": ["03:00"]})
    due = utcnow() - timedelta(hours=2)  # past any grace: the next pass marks it missed and tells the caregivers
    await DoseEvent(patient_id=PydanticObjectId(patient.id), medication_id=PydanticObjectId(med["id"]),
                    slot="2026-01-05T03:00", timezone="UTC", due_at=due, medication_name=med["name"],
                    dose=med["dose"], state="reminded", reminder_notified_at=due).insert()
    (es_note,) = await es_sock.events.wait("notification:new", timeout=15)
    (en_note,) = await en_sock.events.wait("notification:new", timeout=15)
    assert es_note["kind"] == en_note["kind"] == "dose_missed"
    assert es_note["title"] == f"Dosis omitida: {med['name']}"
    assert es_note["body"] == "Prevista el 2026-01-05 03:00 (UTC), sin confirmar"
    assert en_note["title"] == f"Missed dose: {med['name']}"
    assert en_note["body"] == "Due 2026-01-05 03:00 (UTC), not confirmed"
    # What was pushed live is what is stored (and what a push to the phone would carry).
    (stored,) = await notes(api, spanish, "dose_missed")
    assert (stored["title"], stored["body"]) == (es_note["title"], es_note["body"])
    # The English caregiver switches to Spanish: the next notification is in Spanish at once.
    status, _ = await api.request("PATCH", "/api/me", english, json={"language": "es"})
    assert status == 200
    await p_sock.ok("med:update", {"patient_id": patient.id, "medication_id": med["id"], "stock": 2})
    low = (await en_sock.events.wait("notification:new", count=2))[1]
    assert low["kind"] == "low_stock" and (low["title"], low["body"]) == (f"{med['name']}: quedan pocas unidades",
                                                                           "Quedan 2")


async def test_languages_asked_together_for_many_users_cost_one_store_query_and_each_gets_its_own(api: Api) -> None:
    """A claim's batch of reminders is notified patient by patient, at once: their language lookups share one
    query (at 08:00 they had cost a query each, a hundred at a time on the store)."""
    users = [await api.register("patient") for _ in range(6)]
    status, _ = await api.request("PATCH", "/api/me", users[0], json={"language": "es"})
    assert status == 200
    ids = [PydanticObjectId(u.id) for u in users]
    finds = []
    for _ in range(3):  # the least of three counts: the dose scheduler's pass sends finds of its own
        for uid in ids:
            _languages.pop(uid, None)  # as at 08:00, none read in the last minute
        before = COMMANDS.by_name["find"]
        found = await asyncio.gather(*(languages([uid]) for uid in ids))
        finds.append(COMMANDS.by_name["find"] - before)
        assert found == [{ids[0]: "es"}, *({uid: "en"} for uid in ids[1:])]
    assert min(finds) == 1, finds
