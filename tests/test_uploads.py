"""Uploads over real HTTP: images typed by their content, streamed into GridFS with a size cut-off,
bounded dimensions, served back only to the owner and linked users, and used as avatars."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import aiohttp
import piexif
from PIL import Image

from server.app import SERVER
from server.care.documents import AuditEntry
from tests.helpers import Api, User
from tests.query_plans import QUERIES

MAX_BYTES = 10 * 1024 * 1024


def image(fmt: str, size: tuple[int, int] = (40, 30), mode: str = "RGB", **options: Any) -> bytes:
    out = io.BytesIO()
    color = {"RGB": (200, 30, 60), "RGBA": (200, 30, 60, 128), "L": 90}[mode]
    Image.new(mode, size, color).save(out, fmt, **options)
    return out.getvalue()


async def upload(api: Api, user: User, data: bytes, purpose: str = "avatar", patient_id: str | None = None,
                 filename: str = "picture.png", claimed: str = "image/png") -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("purpose", purpose)
    if patient_id is not None:
        form.add_field("patient_id", patient_id)
    form.add_field("file", data, filename=filename, content_type=claimed)
    return await api.request("POST", "/api/uploads", user, data=form)


async def stored_files(api: Api) -> tuple[int, int]:
    assert api.app is not None
    svc = api.app[SERVER]
    db = svc.mongo[svc.settings.mongodb_db]  # type: ignore[index]
    return await db["uploads.files"].count_documents({}), await db["uploads.chunks"].count_documents({})


async def fetch(api: Api, user: User, upload_id: str) -> tuple[int, str, bytes]:
    async with api.http.get(f"{api.base_url}/api/uploads/{upload_id}", headers=user.auth) as resp:
        return resp.status, resp.content_type, await resp.read()


async def test_the_first_upload_of_a_database_creates_its_indexes_and_none_looks_for_them_again(api: Api) -> None:
    """GridBucket creates the bucket's indexes itself, once per process (pymongo's check before each upload read
    every chunk of the bucket on the embedded store: tests/test_query_plans.py would list it)."""
    patient = await api.register("patient")
    assert api.app is not None
    svc = api.app[SERVER]
    db = svc.mongo[svc.settings.mongodb_db]  # type: ignore[index]
    with QUERIES.tap() as seen:
        for _ in range(2):
            status, _ = await upload(api, patient, image("PNG"))
            assert status == 201
    assert not [q for q in seen if q[0].startswith("uploads.") and not q[1]]  # no find_one({}) of the bucket
    chunks = {ix["name"]: ix async for ix in await db["uploads.chunks"].list_indexes()}
    files = {ix["name"] async for ix in await db["uploads.files"].list_indexes()}
    assert chunks["files_id_1_n_1"]["unique"] and "filename_1_uploadDate_1" in files
    assert await stored_files(api) == (2, 2)


async def test_each_image_type_accepted_by_content_and_served_back(api: Api) -> None:
    patient = await api.register("patient")
    cases = [
        ("JPEG", {}, "image/jpeg", (40, 30)),
        # Metadata before the frame header (Exif with no location: kept byte for byte).
        ("JPEG", {"progressive": True, "exif": piexif.dump({"0th": {piexif.ImageIFD.ImageDescription: "x" * 3000}})},
         "image/jpeg", (41, 29)),
        ("PNG", {}, "image/png", (33, 17)),
        ("WEBP", {"quality": 80}, "image/webp", (64, 48)),
        ("WEBP", {"lossless": True}, "image/webp", (65, 49)),
    ]
    for fmt, options, content_type, size in cases:
        data = image(fmt, size, **options)
        status, body = await upload(api, patient, data, filename="x.bin", claimed="application/octet-stream")
        assert status == 201, (fmt, body)
        assert (body["content_type"], body["width"], body["height"]) == (content_type, *size), fmt
        assert body["size"] == len(data) and body["patient_id"] == patient.id and body["owner_id"] == patient.id
        status, served_type, served = await fetch(api, patient, body["id"])
        assert (status, served_type, served) == (200, content_type, data)
    # WebP with alpha has the extended (VP8X) header.
    status, body = await upload(api, patient, image("WEBP", (70, 20), mode="RGBA"))
    assert status == 201 and (body["content_type"], body["width"], body["height"]) == ("image/webp", 70, 20)


async def test_type_comes_from_content_not_name_or_claim(api: Api) -> None:
    patient = await api.register("patient")
    png = image("PNG")
    status, body = await upload(api, patient, png, filename="holiday.jpg", claimed="image/jpeg")
    assert status == 201 and body["content_type"] == "image/png"
    async with api.http.get(f"{api.base_url}/api/uploads/{body['id']}", headers=patient.auth) as resp:
        assert resp.content_type == "image/png" and resp.headers["X-Content-Type-Options"] == "nosniff"
    before = await stored_files(api)
    for data, name in ((b"hello, I am text pretending to be a picture\n" * 10, "fake.png"),
                       (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "x.svg"),
                       (b"GIF89a" + b"\x00" * 64, "anim.gif"),
                       (png[:20], "truncated.png"),
                       (b"", "empty.png")):
        status, err = await upload(api, patient, data, filename=name, claimed="image/png")
        assert status == 415 and err["error"]["code"] == "unsupported_image", name
    assert await stored_files(api) == before


async def test_oversize_dimensions_refused(api: Api) -> None:
    patient = await api.register("patient")
    for data in (image("PNG", (8193, 2), mode="L"), image("JPEG", (2, 9000), mode="L")):
        status, err = await upload(api, patient, data)
        assert status == 422 and err["error"]["code"] == "image_too_large", err
        assert err["error"]["details"]["max_dimension"] == 8192
    assert await stored_files(api) == (0, 0)


async def test_too_large_refused_while_streaming_and_nothing_stored(api: Api) -> None:
    patient = await api.register("patient")
    boundary = "hmtestboundary"
    released = asyncio.Event()
    sent = 0

    async def body():  # type: ignore[no-untyped-def]
        nonlocal sent
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\navatar\r\n'
               f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
               "Content-Type: image/png\r\n\r\n").encode()
        head = image("PNG", (100, 100))
        yield head
        sent = len(head)
        block = b"\0" * (256 * 1024)
        while sent < MAX_BYTES + len(block):
            piece = block[:MAX_BYTES + len(block) - sent]
            yield piece
            sent += len(piece)
        # The file is now past 10 MiB (the server keeps a few bytes back to look for the closing boundary):
        # hold the rest of the body back, unsent. The refusal must come anyway.
        await released.wait()
        yield b"\0" * 1024 + f"\r\n--{boundary}--\r\n".encode()

    headers = {**patient.auth, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    try:
        async with api.http.post(f"{api.base_url}/api/uploads", data=body(), headers=headers,
                                 timeout=aiohttp.ClientTimeout(total=30)) as resp:
            assert not released.is_set()
            assert resp.status == 413
            err = await resp.json()
    finally:
        released.set()
    assert err["error"]["code"] == "upload_too_large" and err["error"]["details"]["max_bytes"] == MAX_BYTES
    assert sent == MAX_BYTES + 256 * 1024
    assert await stored_files(api) == (0, 0)
    # A body declared too large is refused before it is read.
    status, err = await api.request("POST", "/api/uploads", patient, data=b"\0" * (MAX_BYTES + 64 * 1024),
                                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 413 and err["error"]["code"] == "upload_too_large"
    # One byte over is refused; exactly at the limit is fine.
    head = image("PNG", (10, 10))
    status, err = await upload(api, patient, head + b"\0" * (MAX_BYTES + 1 - len(head)))
    assert status == 413 and err["error"]["code"] == "upload_too_large"
    assert await stored_files(api) == (0, 0)
    status, body_ok = await upload(api, patient, head + b"\0" * (MAX_BYTES - len(head)))
    assert status == 201 and body_ok["size"] == MAX_BYTES
    assert (await stored_files(api))[0] == 1


async def test_only_owner_and_linked_users_see_an_upload(api: Api) -> None:
    patient = await api.register("patient")
    carer = await api.register("caregiver")
    stranger = await api.register("caregiver")
    other_patient = await api.register("patient")
    await api.link(patient, carer)
    png = image("PNG")
    status, avatar = await upload(api, patient, png)
    assert status == 201
    # The caregiver adds a medication picture for the linked patient; not for a stranger's patient.
    status, med = await upload(api, carer, png, purpose="medication", patient_id=patient.id)
    assert status == 201 and med["patient_id"] == patient.id and med["owner_id"] == carer.id
    status, err = await upload(api, carer, png, purpose="medication", patient_id=other_patient.id)
    assert status == 403 and err["error"]["code"] == "forbidden"
    status, err = await upload(api, carer, png, purpose="medication")
    assert status == 422
    for upload_id in (avatar["id"], med["id"]):
        for reader in (patient, carer):
            assert (await fetch(api, reader, upload_id))[0] == 200
        for outsider in (stranger, other_patient):
            status, _, body = await fetch(api, outsider, upload_id)
            assert status == 403 and b"forbidden" in body
            status, _ = await api.request("GET", f"/api/uploads/{upload_id}/info", outsider)
            assert status == 403
    denied = await AuditEntry.find(AuditEntry.action == "upload.read", AuditEntry.outcome == "denied").count()
    assert denied == 8  # two uploads, two outsiders, image and info: every refusal audited
    status, meta = await api.request("GET", f"/api/uploads/{med['id']}/info", patient)
    assert status == 200 and meta["purpose"] == "medication" and meta["url"] == f"/api/uploads/{med['id']}"
    # A caregiver's own avatar: the linked patient sees it, a stranger does not.
    status, carer_avatar = await upload(api, carer, png)
    assert status == 201 and carer_avatar["patient_id"] is None
    assert (await fetch(api, patient, carer_avatar["id"]))[0] == 200
    assert (await fetch(api, other_patient, carer_avatar["id"]))[0] == 403
    assert (await fetch(api, patient, "0" * 24))[0] == 404
    assert (await fetch(api, patient, "nonsense"))[0] == 422
    status, _ = await api.request("GET", f"/api/uploads/{avatar['id']}")
    assert status == 401


async def test_avatar_must_be_the_callers_own_avatar_upload(api: Api) -> None:
    patient = await api.register("patient")
    other = await api.register("patient")
    png = image("PNG")
    _, mine = await upload(api, patient, png)
    _, theirs = await upload(api, other, png)
    _, med = await upload(api, patient, png, purpose="medication")
    for bad in (theirs["id"], med["id"], "0" * 24):
        status, err = await api.request("PATCH", "/api/me", patient, json={"avatar_id": bad})
        assert status == 422 and err["error"]["code"] == "invalid_upload", bad
    status, me = await api.request("PATCH", "/api/me", patient, json={"avatar_id": mine["id"]})
    assert status == 200 and me["avatar_id"] == mine["id"]
    status, me = await api.request("PATCH", "/api/me", patient, json={"avatar_id": None})
    assert status == 200 and me["avatar_id"] is None


async def test_malformed_upload_requests(api: Api) -> None:
    patient = await api.register("patient")
    png = image("PNG")
    status, err = await upload(api, patient, png, purpose="wallpaper")
    assert status == 422 and err["error"]["details"]["field"] == "purpose"
    form = aiohttp.FormData()
    form.add_field("file", png, filename="a.png", content_type="image/png")
    form.add_field("purpose", "avatar")
    status, err = await api.request("POST", "/api/uploads", patient, data=form)
    assert status == 422 and err["error"]["details"]["field"] == "purpose"
    form = aiohttp.FormData()
    form.add_field("purpose", "avatar")
    form.add_field("purpose", "avatar")
    form.add_field("file", png, filename="a.png", content_type="image/png")
    status, err = await api.request("POST", "/api/uploads", patient, data=form)
    assert status == 422
    form = aiohttp.FormData()
    form.add_field("purpose", "a" * 1000)
    form.add_field("file", png, filename="a.png", content_type="image/png")
    status, err = await api.request("POST", "/api/uploads", patient, data=form)
    assert status == 422
    status, err = await api.request("POST", "/api/uploads", patient, json={"purpose": "avatar"})
    assert status == 415
    status, err = await api.request("POST", "/api/uploads", data=aiohttp.FormData({"purpose": "avatar"}))
    assert status == 401
    assert await stored_files(api) == (0, 0)
