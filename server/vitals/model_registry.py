"""Model registry: trained models versioned in the store, one active version per model name, and
the record of every prediction made with the version that made it.

A model's bytes live in GridFS (bucket ``models``, on the same client as everything else); its
``ModelVersion`` document holds what it was trained on, its metrics, feature list, who created it and
whether it is active. Activating a version (or rolling back to the one active before) is written to
the store and announced on the control bus, so every server process switches at once, without a
restart; each process keeps the boosters it loaded, at most ``CACHE_SIZE`` versions.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from datetime import datetime
from typing import Any

from beanie import PydanticObjectId
from pymongo.errors import DuplicateKeyError

from ml.bp_model import BPForecaster
from server.core.documents import utcnow
from server.core.errors import ApiError, not_found
from server.infra.pubsub import ControlBus
from server.infra.store import GridBucket
from server.vitals.documents import ModelVersion, Prediction

log = logging.getLogger(__name__)
BUCKET = "models"
CACHE_SIZE = 4
REFRESH_S = 30.0  # re-read the active version this often, in case a bus message was missed (no Redis)
LOADERS = {"bp": BPForecaster.from_bytes}  # model name -> bytes -> loaded model


def _bucket() -> GridBucket:
    return GridBucket(ModelVersion.get_pymongo_collection().database, BUCKET)


class ModelRegistry:
    def __init__(self, bus: ControlBus) -> None:
        self.bus = bus
        self._active: dict[str, int | None] = {}
        self._checked: dict[str, float] = {}
        self._loaded: OrderedDict[tuple[str, int], tuple[ModelVersion, Any]] = OrderedDict()
        self._lock = asyncio.Lock()
        bus.on("model_activated", self._apply)

    async def stop(self) -> None:
        pass

    async def start(self) -> None:
        """Load the active version of every model name (a missing or broken one is logged, not fatal)."""
        async for mv in ModelVersion.find(ModelVersion.active == True):  # noqa: E712
            self._active[mv.name] = mv.version
            try:
                await self._load(mv.name, mv.version)
            except Exception:
                log.exception("could not load %s v%s", mv.name, mv.version)

    # --- writing -----------------------------------------------------------------------------------

    async def register(self, name: str, blob: bytes, card: dict[str, Any], created_by: str) -> ModelVersion:
        """Store a new version (``version`` = last + 1); it is not active until activated."""
        if name not in LOADERS:
            raise ApiError("unknown_model", f"No model called {name}", 404)
        LOADERS[name](blob)  # refuse bytes that would not load
        digest = hashlib.sha256(blob).hexdigest()
        file_id = await (await _bucket().ready()).upload_from_stream(f"{name}-{digest[:12]}", blob,
                                                                     metadata={"model": name})
        for _ in range(5):
            last = await ModelVersion.find(ModelVersion.name == name).sort(-ModelVersion.version).first_or_none()
            mv = ModelVersion(name=name, version=(last.version + 1) if last else 1, created_by=created_by,
                              training_data=card.get("training_data", {}), synthetic=bool(card.get("synthetic")),
                              metrics=card.get("metrics", {}), features=card.get("features", []),
                              kept=bool(card.get("kept")), card=card, file_id=PydanticObjectId(file_id),
                              size=len(blob), sha256=digest)
            try:
                await mv.insert()
                return mv
            except DuplicateKeyError:  # another registration took the number: take the next
                continue
        raise ApiError("conflict", "Could not allocate a model version", 409)

    async def activate(self, name: str, version: int, by: str) -> ModelVersion:
        mv = await ModelVersion.find_one(ModelVersion.name == name, ModelVersion.version == version)
        if mv is None:
            raise not_found("model version")
        await self._load(name, version)  # fail here, not in every process, if it does not load
        await ModelVersion.find(ModelVersion.name == name, ModelVersion.active == True).update(  # noqa: E712
            {"$set": {"active": False}})
        mv.active, mv.activated_at, mv.activated_by = True, utcnow(), by
        await mv.save()
        await self.bus.publish("model_activated", name=name, version=version)
        log.info("model %s v%s activated by %s", name, version, by)
        return mv

    async def rollback(self, name: str, by: str) -> ModelVersion:
        """Activate again the version that was active before the current one."""
        previous = await ModelVersion.find(ModelVersion.name == name, ModelVersion.active == False,  # noqa: E712
                                           ModelVersion.activated_at != None  # noqa: E711
                                           ).sort(-ModelVersion.activated_at).first_or_none()
        if previous is None:
            raise ApiError("no_previous_version", f"No earlier active version of {name} to roll back to", 409)
        return await self.activate(name, previous.version, by)

    async def versions(self, name: str) -> list[ModelVersion]:
        return await ModelVersion.find(ModelVersion.name == name).sort(-ModelVersion.version).to_list()

    # --- reading -----------------------------------------------------------------------------------

    async def _apply(self, msg: dict[str, Any]) -> None:
        name, version = msg["name"], int(msg["version"])
        self._active[name] = version
        self._checked[name] = time.monotonic()
        await self._load(name, version)

    async def _load(self, name: str, version: int) -> tuple[ModelVersion, Any]:
        key = (name, version)
        async with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            mv = await ModelVersion.find_one(ModelVersion.name == name, ModelVersion.version == version)
            if mv is None:
                raise not_found("model version")
            stream = await _bucket().open_download_stream(mv.file_id)
            blob = await stream.read()
            if hashlib.sha256(blob).hexdigest() != mv.sha256:
                raise ApiError("model_corrupt", f"Stored bytes of {name} v{version} do not match", 500)
            model = await asyncio.to_thread(LOADERS[name], blob)
            self._loaded[key] = (mv, model)
            while len(self._loaded) > CACHE_SIZE:
                self._loaded.popitem(last=False)
            return mv, model

    async def active(self, name: str) -> tuple[ModelVersion, Any]:
        """The active version of ``name`` and the loaded model; ``model_unavailable`` if none is active."""
        now = time.monotonic()
        if now - self._checked.get(name, -REFRESH_S) >= REFRESH_S:
            self._checked[name] = now
            mv = await ModelVersion.find_one(ModelVersion.name == name, ModelVersion.active == True)  # noqa: E712
            self._active[name] = mv.version if mv else None
        version = self._active.get(name)
        if version is None:
            raise ApiError("model_unavailable", f"No {name} model is active; train one with `healthmate train`", 503)
        return await self._load(name, version)

    async def record(self, mv: ModelVersion, patient_id: PydanticObjectId, as_of: datetime, output: dict[str, Any],
                     trigger: str, requested_by: PydanticObjectId | None) -> Prediction:
        prediction = Prediction(patient_id=patient_id, model_name=mv.name, model_version=mv.version,
                                synthetic=mv.synthetic, label=mv.card.get("label"), as_of=as_of, trigger=trigger,
                                requested_by=requested_by, output=output)
        await prediction.insert()
        return prediction
