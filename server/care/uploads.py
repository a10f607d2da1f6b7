"""Uploads: profile pictures and medication images, stored in GridFS (bucket ``uploads``).

``POST /api/uploads`` takes ``multipart/form-data`` with the fields ``purpose`` (``avatar`` or
``medication``) and, optionally, ``patient_id``, followed by the ``file`` part. The file is read in
chunks straight into a GridFS upload stream: its type is decided by its magic bytes (JPEG, PNG,
WebP) and its size read from its header before anything is stored (a JPEG's header is stored without
its location metadata: ``server.infra.image_metadata``), and the upload is aborted
(and its chunks deleted) as soon as it passes ``upload_max_bytes``, so nothing is ever held whole.

An upload belongs to its uploader (the owner) and, for a medication image or a patient's own
avatar, to a patient: the patient and every user linked to that patient now may read it (an uploader
whose link has ended no longer may). A caregiver's or clinician's avatar is readable by the owner and by
the patients linked to them.
"""

from __future__ import annotations

from typing import Any, Protocol

from beanie import PydanticObjectId
from gridfs.asynchronous.grid_file import AsyncGridIn, AsyncGridOut

from server.care.access import linked, require_patient
from server.care.documents import User
from server.core.documents import iso
from server.core.errors import ApiError, forbidden, not_found
from server.core.identity import Client, Principal, as_object_id
from server.infra.image_metadata import strip_location
from server.infra.image_probe import ImageInfo, NotAnImage, probe_image
from server.infra.store import GridBucket

BUCKET = "uploads"
PURPOSES = ("avatar", "medication")
FIELDS = ("purpose", "patient_id")  # the form fields before the file part
READ_CHUNK = 64 * 1024
MAX_HEADER_BYTES = 512 * 1024  # JPEG metadata (EXIF, ICC) may come before the frame header and the image data
MAX_FIELD_BYTES = 64
MULTIPART_SLACK = 16 * 1024  # boundaries and the small fields around the file


class Part(Protocol):
    """One part of a multipart body, as the transport reads it."""

    name: str | None

    async def read_chunk(self, size: int = ...) -> bytes: ...


def public(doc: dict[str, Any]) -> dict[str, Any]:
    meta = doc["metadata"]
    return {"id": str(doc["_id"]), "purpose": meta["purpose"], "content_type": meta["content_type"],
            "width": meta["width"], "height": meta["height"], "size": doc["length"],
            "owner_id": str(meta["owner_id"]),
            "patient_id": str(meta["patient_id"]) if meta.get("patient_id") else None,
            "created_at": iso(doc["uploadDate"]), "url": f"/api/uploads/{doc['_id']}"}


async def read_field(part: Part) -> str:
    """A small text field of the form (at most MAX_FIELD_BYTES)."""
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


async def _require_readable(principal: Principal, doc: dict[str, Any], client: Client) -> None:
    meta = doc["metadata"]
    if meta.get("patient_id") is not None:  # the patient's: for whoever may see the patient's data now, even
        # the member who uploaded it, once their link has ended
        await require_patient(principal, meta["patient_id"], "upload.read", client, upload_id=str(doc["_id"]))
        return
    if meta["owner_id"] == principal.user_id:
        return
    # A caregiver's or clinician's own avatar: the patients linked to them may see it.
    if not await linked(principal.user_id, meta["owner_id"]):
        raise forbidden("You may not see this upload")


class Uploads:
    def __init__(self, max_bytes: int, max_dimension: int) -> None:
        self.max_bytes, self.max_dimension = max_bytes, max_dimension
        self.max_request_bytes = max_bytes + MULTIPART_SLACK

    @staticmethod
    def bucket() -> GridBucket:
        database = User.get_pymongo_collection().database  # the store Beanie was started on
        return GridBucket(database, BUCKET, chunk_size_bytes=255 * 1024)

    async def find(self, upload_id: Any) -> dict[str, Any] | None:
        """The stored file's GridFS document (``metadata`` holds owner, patient, purpose, type, size)."""
        oid = as_object_id(upload_id, "upload_id")
        return await User.get_pymongo_collection().database[f"{BUCKET}.files"].find_one({"_id": oid})

    async def require_own(self, owner_id: PydanticObjectId, upload_id: Any, purpose: str,
                          patient_id: PydanticObjectId | None = None) -> dict[str, Any]:
        """Refuse a reference (``avatar_id``, a medication's image) to an upload that is not the caller's
        upload for this purpose (and, if given, for this patient)."""
        doc = await self.find(upload_id)
        meta = (doc or {}).get("metadata") or {}
        if (doc is None or meta.get("owner_id") != owner_id or meta.get("purpose") != purpose
                or (patient_id is not None and meta.get("patient_id") != patient_id)):
            raise ApiError("invalid_upload", f"That is not one of your {purpose} uploads", 422,
                           {"upload_id": str(upload_id)})
        return doc

    # --- receiving ---------------------------------------------------------------------------------

    def too_big(self) -> ApiError:
        return ApiError("upload_too_large", f"An upload is at most {self.max_bytes} bytes", 413,
                        {"max_bytes": self.max_bytes}, headers={"Connection": "close"})

    def _check(self, info: ImageInfo) -> None:
        if max(info.width, info.height) > self.max_dimension:
            raise ApiError("image_too_large", f"Images are at most {self.max_dimension} pixels on a side", 422,
                           {"width": info.width, "height": info.height, "max_dimension": self.max_dimension})

    async def _read_head(self, part: Part) -> tuple[bytes, ImageInfo]:
        """Read just enough of the file to know its type and size (bounded by MAX_HEADER_BYTES) and, for a
        JPEG, its whole header, returned without the location metadata (``image_metadata``)."""
        head, info = b"", None
        while chunk := await part.read_chunk(READ_CHUNK):
            head += chunk
            if len(head) > self.max_bytes:
                raise self.too_big()
            try:
                info = info or probe_image(head)
                if info is not None:
                    self._check(info)
                    kept = strip_location(head) if info.content_type == "image/jpeg" else head
                    if kept is not None:
                        return kept, info
            except NotAnImage as exc:
                raise ApiError("unsupported_image", f"Only JPEG, PNG and WebP images are accepted ({exc})",
                               415) from None
            if len(head) > MAX_HEADER_BYTES:
                break
        raise ApiError("unsupported_image", "Only JPEG, PNG and WebP images are accepted (no image header found)",
                       415)

    async def _store(self, part: Part, grid_in: AsyncGridIn, head: bytes) -> None:
        size = len(head)
        try:
            await grid_in.write(head)
            while chunk := await part.read_chunk(READ_CHUNK):
                size += len(chunk)
                if size > self.max_bytes:
                    raise self.too_big()
                await grid_in.write(chunk)
        except BaseException:
            await grid_in.abort()
            raise
        await grid_in.close()

    async def receive(self, principal: Principal, fields: dict[str, str], part: Part,
                      client: Client) -> dict[str, Any]:
        """Store the file ``part`` after the form's ``fields``, streamed: nothing is ever held whole."""
        purpose = fields.get("purpose")
        if purpose not in PURPOSES:
            raise ApiError("invalid_payload", "purpose (avatar or medication) must come before the file", 422,
                           {"field": "purpose"})
        patient_id = await _owning_patient(principal, purpose, fields.get("patient_id") or None, client)
        head, info = await self._read_head(part)
        grid_in = (await self.bucket().ready()).open_upload_stream(purpose, metadata={
            "owner_id": principal.user_id, "patient_id": patient_id, "purpose": purpose,
            "content_type": info.content_type, "width": info.width, "height": info.height})
        await self._store(part, grid_in, head)
        doc = await self.find(grid_in._id)
        assert doc is not None
        return public(doc)

    # --- serving -----------------------------------------------------------------------------------

    async def readable(self, principal: Principal, upload_id: str, client: Client) -> dict[str, Any]:
        """The upload's GridFS document, if the principal may see it."""
        doc = await self.find(upload_id)
        if doc is None or not doc.get("metadata"):
            raise not_found("upload")
        await _require_readable(principal, doc, client)
        return doc

    async def open(self, doc: dict[str, Any]) -> AsyncGridOut:
        return await self.bucket().open_download_stream(doc["_id"])
