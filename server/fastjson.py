"""orjson behind the ``json`` interface python-socketio and engine.io call (``dumps``/``loads``):
several times faster than the standard library on every event, ack and push. It writes NaN as
null (valid JSON, unlike the standard library's ``NaN``) and datetimes as ISO 8601."""

from __future__ import annotations

from typing import Any

import orjson

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, option=_OPTIONS).decode()


def loads(s: str | bytes, **_: Any) -> Any:
    return orjson.loads(s)
