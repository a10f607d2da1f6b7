"""docs/asyncapi.yaml (AsyncAPI 3.0) and docs/openapi.yaml (OpenAPI 3.1) made from the code: the app is built
(nothing started), and its table of events (request model, ``reply`` type, the handler's docstring), of
pushed events (``events.push``) and of routes (``Mount.route``) gives every operation; the JSON Schemas
come from the pydantic models in one pass (one name per model); the error codes from
``server/core/error_codes.py``. The prose that belongs to no model (connecting, limits, MQTT) is in the
frame files beside this module."""

from __future__ import annotations

import inspect
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema

from server.contract.yamlout import dump
from server.core.error_codes import CODES
from server.core.wire import ErrorAck, ErrorBody
from server.transport.events import Event, EventRouter
from server.transport.http import RouteDoc

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent.parent / "docs"
SCHEMAS = "#/components/schemas/{model}"
# Routes the app serves that are not an API operation: the dashboard's files are documented as one each.
Key = tuple[str, str]


def contract_app() -> web.Application:
    """The app as ``healthmate serve`` builds it, never started (no store, no sockets)."""
    from server.app import create_app
    from server.core.config import load_settings

    return create_app(load_settings(jwt_secret="x" * 40, data_dir=Path(tempfile.mkdtemp(prefix="hm-docs-"))))


def _doc(handler: Callable[..., Any]) -> tuple[str, str]:
    """(summary, description) from a handler's docstring: the first paragraph and the rest."""
    text = inspect.getdoc(handler) or ""
    first, _, rest = text.partition("\n\n")
    return " ".join(first.split()), rest.strip()


def message_id(event: str) -> str:
    return event.replace(":", ".")


class _NoFieldTitles(GenerateJsonSchema):
    """A property's title only repeats its name."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


class Schemas:
    """Every type the documents name, given a key; their JSON Schemas made in one pass."""

    def __init__(self) -> None:
        self.inputs: list[tuple[Any, str, TypeAdapter[Any]]] = []

    def add(self, key: Any, t: Any) -> None:
        self.inputs.append((key, "validation", TypeAdapter(t)))

    def build(self) -> tuple[dict[Any, Any], dict[str, Any]]:
        keys, defs = TypeAdapter.json_schemas(self.inputs, ref_template=SCHEMAS, schema_generator=_NoFieldTitles)
        return {k: v for (k, _), v in keys.items()}, defs.get("$defs", {})


def _ack(data: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [{"type": "object", "additionalProperties": False, "required": ["ok", "data"],
                       "properties": {"ok": {"const": True}, "data": data}},
                      {"$ref": SCHEMAS.format(model="ErrorAck")}]}


def _payload(event: Event, schema: dict[str, Any]) -> dict[str, Any]:
    if event.model is None:
        return {"description": "No payload (omit it, or send null or {})",
                "anyOf": [{"type": "null"}, {"type": "object", "maxProperties": 0}]}
    return schema


def asyncapi(router: EventRouter) -> dict[str, Any]:
    frame = yaml.safe_load((HERE / "asyncapi_frame.yaml").read_text())
    schemas = Schemas()
    schemas.add("ErrorAck", ErrorAck)
    for name, event in sorted(router.events.items()):
        schemas.add(("in", name), event.model)
        schemas.add(("reply", name), event.reply)
    for name, pushed in sorted(router.pushed.items()):
        schemas.add(("push", name), pushed.model)
    keys, defs = schemas.build()
    messages: dict[str, Any] = dict(frame["messages"])
    operations: dict[str, Any] = {}
    root = "#/channels/root"
    for name, event in sorted(router.events.items()):
        mid = message_id(name)
        summary, description = _doc(event.handler)
        roles = ", ".join(sorted(event.roles))
        messages[mid] = {"name": name, "payload": _payload(event, keys[("in", name)])}
        messages[mid + ".reply"] = {"name": name, "summary": f"The ack of {name}",
                                    "payload": _ack(keys[("reply", name)])}
        op: dict[str, Any] = {"action": "receive",
                              "summary": summary if summary.startswith("(") else f"({roles}) {summary}".strip()}
        if description:
            op["description"] = description
        op.update({"channel": {"$ref": root}, "messages": [{"$ref": f"{root}/messages/{mid}"}],
                   "reply": {"channel": {"$ref": root}, "messages": [{"$ref": f"{root}/messages/{mid}.reply"}]}})
        operations[name] = op
    for name, pushed in sorted(router.pushed.items()):
        mid = message_id(name)
        messages[mid] = {"name": name, "payload": keys[("push", name)]}
        operations[name] = {"action": "send", "summary": pushed.summary, "channel": {"$ref": root},
                            "messages": [{"$ref": f"{root}/messages/{mid}"}]}
    channels = {"root": {"address": "/", "description": "The default Socket.IO namespace.",
                         "messages": {mid: {"$ref": f"#/components/messages/{mid}"}
                                      for mid in messages if not mid.startswith("Mqtt")}},
                **frame["channels"]}
    info = {**frame["info"], "description": frame["info"]["description"].rstrip() + "\n\nError codes (an ack's "
            "`error.code`; the status is REST's):\n\n" + _error_table() + "\n"}
    return {"asyncapi": "3.0.0", "info": info, "defaultContentType": "application/json",
            "servers": frame["servers"], "channels": channels, "operations": operations,
            "components": {"securitySchemes": frame["securitySchemes"], "schemas": defs, "messages": messages}}


def _tag(handler: Callable[..., Any]) -> str:
    module = getattr(handler, "__module__", "") or ""
    parts = module.split(".")
    return parts[1] if parts[0] == "server" and len(parts) > 2 else parts[0] if parts[0] != "server" else "operations"


def _parameters(path: str, query: dict[str, Any] | None) -> list[dict[str, Any]]:
    params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
              for p in re.findall(r"{(\w+)}", path)]
    for name, prop in (query or {}).get("properties", {}).items():
        param = {"name": name, "in": "query", "required": name in (query or {}).get("required", []),
                 "schema": {k: v for k, v in prop.items() if k not in ("title", "description")}}
        if "description" in prop:
            param["description"] = prop["description"]
        params.append(param)
    return params


def _error_table() -> str:
    rows = "\n".join(f"| `{e.code}` | {' / '.join(map(str, e.statuses))} | {e.meaning} | {e.action} |" for e in CODES)
    return "| code | HTTP status | meaning | what the client should do |\n| --- | --- | --- | --- |\n" + rows


GUIDE_TABLE = re.compile(r"(<!-- error-codes:[^>]*-->\n).*?(<!-- /error-codes -->)", re.S)


def guide(text: str) -> str:
    """The client guide with its error table rendered from the registry."""
    return GUIDE_TABLE.sub(lambda m: m.group(1) + _error_table() + "\n" + m.group(2), text, count=1)


def openapi(docs: dict[Key, RouteDoc]) -> dict[str, Any]:
    frame = yaml.safe_load((HERE / "openapi_frame.yaml").read_text())
    schemas = Schemas()
    schemas.add("ErrorBody", ErrorBody)
    for key, doc in docs.items():
        if doc.body is not None:
            schemas.add(("body", key), doc.body)
        if doc.query is not None:
            schemas.add(("query", key), doc.query)
        if doc.reply is not None:
            schemas.add(("reply", key), doc.reply)
    keys, defs = schemas.build()
    error = {"description": "The uniform error (the codes: see the table above)",
             "content": {"application/json": {"schema": keys["ErrorBody"]}}}
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), doc in sorted(docs.items()):
        summary, description = _doc(doc.handler)
        op: dict[str, Any] = {"tags": [_tag(doc.handler)], "summary": summary}
        if description:
            op["description"] = description
        if doc.public:
            op["security"] = []
        params = _parameters(path, keys.get(("query", (method, path))))
        if params:
            op["parameters"] = params
        if doc.body is not None:
            op["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": keys[("body", (method, path))]}}}
        responses: dict[str, Any] = {}
        for status in doc.status if isinstance(doc.status, tuple) else (doc.status,):
            if doc.reply is not None:
                responses[str(status)] = {"description": "OK", "content": {
                    "application/json": {"schema": keys[("reply", (method, path))]}}}
            elif doc.media is not None and status != 204:
                responses[str(status)] = {"description": "OK", "content": {doc.media: {}}}
            else:
                responses[str(status)] = {"description": "No content"}
        responses.update({"4XX": error, "5XX": error})
        op["responses"] = responses
        paths.setdefault(path, {})[method.lower()] = op
    info = {**frame["info"], "description": frame["info"]["description"].rstrip() + "\n\nError codes:\n\n"
            + _error_table() + "\n"}
    return {"openapi": "3.1.0", "info": info, "servers": frame["servers"], "security": frame["security"],
            "paths": paths, "components": {"securitySchemes": frame["securitySchemes"], "schemas": defs}}


def documents(app: web.Application | None = None) -> dict[str, str]:
    """File name (in docs/) -> text of each generated document."""
    from server.app import REST, SERVER

    app = app if app is not None else contract_app()
    served = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.resource is not None and r.method != "HEAD" and not r.resource.canonical.startswith("/socket.io")}
    undocumented = served - set(app[REST].docs)
    if undocumented:
        raise ValueError(f"routes served without a contract (mount them with Mount.route): {sorted(undocumented)}")
    return {"asyncapi.yaml": dump(asyncapi(app[SERVER].realtime.router)),
            "openapi.yaml": dump(openapi(app[REST].docs)),
            "client-guide.md": guide((DOCS / "client-guide.md").read_text())}


def write(target: Path = DOCS) -> list[Path]:
    written = []
    for name, text in documents().items():
        path = target / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written
