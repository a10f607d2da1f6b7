"""orjson behind the ``json`` interface python-socketio and engine.io call (``dumps``/``loads``):
several times faster than the standard library on every event, ack and push. It writes NaN as
null (valid JSON, unlike the standard library's ``NaN``) and datetimes as ISO 8601. It reads what
Python clients' standard library writes and orjson refuses (``NaN``, ``Infinity``, lone surrogates)
the way the standard library does, so such a payload reaches validation and gets a clear refusal
rather than being dropped unanswered."""

from __future__ import annotations

import json
from typing import Any

import orjson

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, option=_OPTIONS).decode()


def loads(s: str | bytes, **_: Any) -> Any:
    try:
        return orjson.loads(s)
    except orjson.JSONDecodeError:
        return json.loads(s)
