"""Uploads: profile pictures and medication images, stored in GridFS (bucket ``uploads``).

``POST /api/uploads`` takes ``multipart/form-data`` with the fields ``purpose`` (``avatar`` or
``medication``) and, optionally, ``patient_id``, followed by the ``file`` part. The file is read in
chunks straight into a GridFS upload stream: its type is decided by its magic bytes (JPEG, PNG,
WebP) and its size read from its header before anything is stored, and the upload is aborted
(and its chunks deleted) as soon as it passes ``upload_max_bytes``, so nothing is ever held whole.

An upload belongs to its uploader (the owner) and, for a medication image or a patient's own
avatar, to a patient: the owner and every user linked to that patient may read it. A
caregiver's or clinician's avatar is readable by the owner and by the patients linked to them.
"""

from __future__ import annotations

from typing import Any

from aiohttp import BodyPartReader, web
from beanie import PydanticObjectId
from gridfs import AsyncGridFSBucket
from gridfs.asynchronous.grid_file import AsyncGridIn

from server.care.access import linked, require_patient
from server.core.documents import iso
from server.core.errors import ApiError, forbidden, not_found
from server.core.identity import Client, Principal, as_object_id
from server.infra.image_probe import ImageInfo, NotAnImage, probe_image
from server.services import Services
from server.transport.http import client_of, require_principal, send_grid_file, services

BUCKET = "uploads"
PURPOSES = ("avatar", "medication")
READ_CHUNK = 64 * 1024
MAX_HEADER_BYTES = 512 * 1024  # JPEG metadata (EXIF, ICC) may come before the frame header
MAX_FIELD_BYTES = 64
MULTIPART_SLACK = 16 * 1024  # boundaries and the small fields around the file


def bucket(svc: Services) -> AsyncGridFSBucket:
    assert svc.mongo is not None
    return AsyncGridFSBucket(svc.mongo[svc.settings.mongodb_db], bucket_name=BUCKET, chunk_size_bytes=255 * 1024)


async def find_upload(svc: Services, upload_id: Any) -> dict[str, Any] | None:
    """The stored file's GridFS document (``metadata`` holds owner, patient, purpose, type, size)."""
    assert svc.mongo is not None
    oid = as_object_id(upload_id, "upload_id")
    return await svc.mongo[svc.settings.mongodb_db][f"{BUCKET}.files"].find_one({"_id": oid})


async def require_own_upload(svc: Services, owner_id: PydanticObjectId, upload_id: Any, purpose: str,
                             patient_id: PydanticObjectId | None = None) -> dict[str, Any]:
    """Refuse a reference (``avatar_id``, a medication's image) to an upload that is not the caller's
    upload for this purpose (and, if given, for this patient)."""
    doc = await find_upload(svc, upload_id)
    meta = (doc or {}).get("metadata") or {}
    if (doc is None or meta.get("owner_id") != owner_id or meta.get("purpose") != purpose
            or (patient_id is not None and meta.get("patient_id") != patient_id)):
        raise ApiError("invalid_upload", f"That is not one of your {purpose} uploads", 422,
                       {"upload_id": str(upload_id)})
    return doc


def public(doc: dict[str, Any]) -> dict[str, Any]:
    meta = doc["metadata"]
    return {"id": str(doc["_id"]), "purpose": meta["purpose"], "content_type": meta["content_type"],
            "width": meta["width"], "height": meta["height"], "size": doc["length"],
            "owner_id": str(meta["owner_id"]),
            "patient_id": str(meta["patient_id"]) if meta.get("patient_id") else None,
            "created_at": iso(doc["uploadDate"]), "url": f"/api/uploads/{doc['_id']}"}


# --- receiving -------------------------------------------------------------------------------------

async def _field(part: BodyPartReader) -> str:
    data = b""
    while chunk := await part.read_chunk(MAX_FIELD_BYTES + 1):
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise ApiError("invalid_payload", f"The field {part.name} is too long", 422, {"field": part.name})
    try:
        return data.decode().strip()
    except UnicodeDecodeError:
        raise ApiError("invalid_payload", f"The field {part.name} is not text", 422, {"field": part.name}) from None


async def _owning_patient(principal: Principal, purpose: str, patient_id: str | None,
                          client: Client) -> PydanticObjectId | None:
    if purpose == "avatar":
        if patient_id is not None and patient_id != principal.id:
            raise ApiError("invalid_payload", "An avatar is the caller's own; leave patient_id out", 422,
                           {"field": "patient_id"})
        return principal.user_id if principal.role == "patient" else None
    if patient_id is None:
        if principal.role != "patient":
            raise ApiError("invalid_payload", "Say which patient the medication image is for", 422,
                           {"field": "patient_id"})
        patient_id = principal.id
    return await require_patient(principal, patient_id, "upload.create", client, purpose=purpose)


class _Limits:
    def __init__(self, max_bytes: int, max_dimension: int) -> None:
        self.max_bytes, self.max_dimension = max_bytes, max_dimension

    def too_big(self) -> ApiError:
        return ApiError("upload_too_large", f"An upload is at most {self.max_bytes} bytes", 413,
                        {"max_bytes": self.max_bytes}, headers={"Connection": "close"})

    def check(self, info: ImageInfo) -> None:
        if max(info.width, info.height) > self.max_dimension:
            raise ApiError("image_too_large", f"Images are at most {self.max_dimension} pixels on a side", 422,
                           {"width": info.width, "height": info.height, "max_dimension": self.max_dimension})


async def _read_head(part: BodyPartReader, limits: _Limits) -> tuple[bytes, ImageInfo]:
    """Read just enough of the file to know its type and size (bounded by MAX_HEADER_BYTES)."""
    head = b""
    while True:
        chunk = await part.read_chunk(READ_CHUNK)
        if not chunk:
            break
        head += chunk
        if len(head) > limits.max_bytes:
            raise limits.too_big()
        try:
            info = probe_image(head)
        except NotAnImage as exc:
            raise ApiError("unsupported_image", f"Only JPEG, PNG and WebP images are accepted ({exc})", 415) from None
        if info is not None:
            limits.check(info)
            return head, info
        if len(head) > MAX_HEADER_BYTES:
            break
    raise ApiError("unsupported_image", "Only JPEG, PNG and WebP images are accepted (no image header found)", 415)


async def _store(part: BodyPartReader, grid_in: AsyncGridIn, head: bytes, limits: _Limits) -> None:
    size = len(head)
    try:
        await grid_in.write(head)
        while chunk := await part.read_chunk(READ_CHUNK):
            size += len(chunk)
            if size > limits.max_bytes:
                raise limits.too_big()
            await grid_in.write(chunk)
    except BaseException:
        await grid_in.abort()
        raise
    await grid_in.close()


async def create(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    svc = services(request)
    limits = _Limits(svc.settings.upload_max_bytes, svc.settings.upload_max_dimension)
    if request.content_length is not None and request.content_length > limits.max_bytes + MULTIPART_SLACK:
        raise limits.too_big()
    if request.content_type != "multipart/form-data":
        raise ApiError("unsupported_media_type", "Send multipart/form-data with purpose, patient_id and file", 415)
    reader = await request.multipart()
    fields: dict[str, str] = {}
    while True:
        part = await reader.next()
        if part is None:
            raise ApiError("invalid_payload", "The file part is missing", 422, {"field": "file"})
        if not isinstance(part, BodyPartReader):
            raise ApiError("invalid_payload", "Nested multipart bodies are not accepted", 422)
        if part.name == "file":
            break
        if part.name not in ("purpose", "patient_id") or part.name in fields:
            raise ApiError("invalid_payload", f"Unexpected field {part.name!r}", 422, {"field": part.name})
        fields[part.name] = await _field(part)
    purpose = fields.get("purpose")
    if purpose not in PURPOSES:
        raise ApiError("invalid_payload", "purpose (avatar or medication) must come before the file", 422,
                       {"field": "purpose"})
    client = client_of(request)
    patient_id = await _owning_patient(principal, purpose, fields.get("patient_id") or None, client)
    head, info = await _read_head(part, limits)
    grid_in = bucket(svc).open_upload_stream(purpose, metadata={
        "owner_id": principal.user_id, "patient_id": patient_id, "purpose": purpose,
        "content_type": info.content_type, "width": info.width, "height": info.height})
    await _store(part, grid_in, head, limits)
    doc = await find_upload(svc, grid_in._id)
    assert doc is not None
    return web.json_response(public(doc), status=201)


# --- serving -------------------------------------------------------------------------------------

async def require_readable(principal: Principal, doc: dict[str, Any], client: Client) -> None:
    meta = doc["metadata"]
    if meta["owner_id"] == principal.user_id:
        return
    if meta.get("patient_id") is not None:
        await require_patient(principal, meta["patient_id"], "upload.read", client, upload_id=str(doc["_id"]))
        return
    # A caregiver's or clinician's own avatar: the patients linked to them may see it.
    if not await linked(principal.user_id, meta["owner_id"]):
        raise forbidden("You may not see this upload")


async def serve(request: web.Request) -> web.StreamResponse:
    principal = await require_principal(request)
    svc = services(request)
    doc = await find_upload(svc, request.match_info["upload_id"])
    if doc is None or not doc.get("metadata"):
        raise not_found("upload")
    await require_readable(principal, doc, client_of(request))
    grid_out = await bucket(svc).open_download_stream(doc["_id"])
    return await send_grid_file(request, grid_out, {
        "Content-Type": doc["metadata"]["content_type"], "Cache-Control": "private, max-age=86400",
        "X-Content-Type-Options": "nosniff", "Content-Disposition": "inline",
        "Content-Security-Policy": "default-src 'none'"})


async def info(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    doc = await find_upload(services(request), request.match_info["upload_id"])
    if doc is None or not doc.get("metadata"):
        raise not_found("upload")
    await require_readable(principal, doc, client_of(request))
    return web.json_response(public(doc))


def setup(app: web.Application) -> None:
    app.router.add_post("/api/uploads", create)
    app.router.add_get("/api/uploads/{upload_id}", serve)
    app.router.add_get("/api/uploads/{upload_id}/info", info)
