"""Every ack, pushed event and REST response the tests observe, checked against the generated documents
(docs/asyncapi.yaml, docs/openapi.yaml; tests/test_contract.py keeps them equal to what the code generates).

The clients of tests/helpers.py and tests/device_clients.py report what they receive here; a message that
does not match its schema (an unknown field, a wrong type, an undeclared error code, an undocumented event
or route) is recorded, and the autouse fixture of tests/conftest.py fails the test that saw it. The
validators (jsonschema-rs) are compiled once per message kind, on first use; a check costs microseconds.
``COVERAGE`` counts what was checked, per event and per route, for the session's summary."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema_rs
import yaml

DOCS = Path(__file__).resolve().parent.parent / "docs"
ASYNC, REST = "urn:healthmate:asyncapi", "urn:healthmate:openapi"


def _no_bytes(value: Any) -> Any:
    """Binary attachments (``format: binary`` strings) as text, so that the JSON validator can take them."""
    if isinstance(value, bytes | bytearray | memoryview):
        return "<binary>"
    if isinstance(value, dict):
        return {k: _no_bytes(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_bytes(v) for v in value]
    return value


class Contract:
    def __init__(self) -> None:
        self.asyncapi = yaml.load((DOCS / "asyncapi.yaml").read_text(), Loader=yaml.CSafeLoader)
        self.openapi = yaml.load((DOCS / "openapi.yaml").read_text(), Loader=yaml.CSafeLoader)
        self.registry = jsonschema_rs.Registry([(ASYNC, self.asyncapi), (REST, self.openapi)])
        self._validators: dict[str, Any] = {}
        ops = self.asyncapi["operations"]
        self.received = {n for n, op in ops.items() if op["action"] == "receive" and "reply" in op}
        self.pushed = {n for n, op in ops.items() if op["action"] == "send" and op["channel"]["$ref"].endswith("root")}
        self.routes = [(method.upper(), re.compile("^" + re.sub(r"{\w+}", "[^/]+", path) + "$"), path, op)
                       for path, methods in self.openapi["paths"].items() for method, op in methods.items()]
        self.violations: list[str] = []
        self.coverage: Counter[str] = Counter()
        self.codes_seen: set[str] = set()

    def _validator(self, ref: str) -> Any:
        v = self._validators.get(ref)
        if v is None:
            v = self._validators[ref] = jsonschema_rs.Draft202012Validator(
                {"$ref": ref}, registry=self.registry, validate_formats=True)
        return v

    def _check(self, ref: str, what: str, data: Any) -> bool:
        validator = self._validator(ref)
        try:
            errors = list(validator.iter_errors(data))
        except (TypeError, ValueError):  # bytes in it
            data = _no_bytes(data)
            errors = list(validator.iter_errors(data))
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            self.codes_seen.add(str(data["error"].get("code")))
        if errors:
            shown = "; ".join(f"{'/'.join(map(str, e.instance_path))}: {e.message}"[:300] for e in errors[:5])
            self.violations.append(f"{what} does not match the contract: {shown}\n  got: {str(data)[:600]}")
        return not errors

    def ack(self, event: str, reply: Any) -> None:
        """The ack of a Socket.IO event (or its MQTT equivalent)."""
        if isinstance(reply, dict) and reply.get("ok") is True and event in self.received:
            if set(reply) != {"ok", "data"}:
                self.violations.append(f"the ack of {event} has keys {sorted(reply)}, not ok and data")
                return
            mid = event.replace(":", ".")  # the data alone, for a precise message
            ref = f"{ASYNC}#/components/messages/{mid}.reply/payload/oneOf/0/properties/data"
            if self._check(ref, f"the ack of {event}", reply["data"]):
                self.coverage[f"ack {event}"] += 1
        elif self._check(f"{ASYNC}#/components/schemas/ErrorAck", f"the refusal of {event}", reply) and \
                event in self.received:  # a refusal (of any event, known or not) with a declared code
            self.coverage[f"refused {event}"] += 1

    def push(self, event: str, data: Any) -> None:
        """An event the server pushed."""
        if event not in self.pushed:
            self.violations.append(f"the server pushed {event}, which docs/asyncapi.yaml does not document")
            return
        if self._check(f"{ASYNC}#/components/messages/{event.replace(':', '.')}/payload", f"pushed {event}", data):
            self.coverage[f"push {event}"] += 1

    def response(self, method: str, path: str, status: int, content_type: str, body: Any) -> None:
        """A REST response (its JSON body, when it has one)."""
        path = path.split("?", 1)[0]
        found = next(((p, op) for m, rx, p, op in self.routes if m == method.upper() and rx.match(path)), None)
        if found is None:
            if content_type == "application/json":
                self._check(f"{REST}#/components/schemas/ErrorBody", f"{method} {path} (no such route)", body)
            return
        template, op = found
        responses = op["responses"]
        key = str(status) if str(status) in responses else f"{str(status)[0]}XX"
        if key not in responses:
            self.violations.append(f"{method} {template} answered {status}, which docs/openapi.yaml does not document")
            return
        if content_type != "application/json":
            self.coverage[f"{method} {template}"] += 1
            return
        content = responses[key].get("content", {})
        if "application/json" not in content:
            self.violations.append(f"{method} {template} answered {status} with JSON; documented: {list(content)}")
            return
        pointer = "/".join(("paths", template.replace("~", "~0").replace("/", "~1"), method.lower(), "responses", key,
                            "content", "application~1json", "schema"))
        if self._check(f"{REST}#/{quote(pointer, safe='/~')}", f"{method} {template} {status}", body):
            self.coverage[f"{method} {template}"] += 1

    def take_violations(self) -> list[str]:
        found, self.violations = self.violations, []
        return found


CONTRACT = Contract()
