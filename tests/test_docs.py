"""The protocol documents are the code's: docs/asyncapi.yaml, docs/openapi.yaml and the client guide's error
table are what ``healthmate docs`` generates from the models and registrations (a change to either without the
other fails here); both documents pass the reference validators (openapi-spec-validator; the official
AsyncAPI parser, @asyncapi/parser, run through node); every route is documented and every Socket.IO event,
received or pushed; both are served. What the tests' traffic looks like is checked against them by
tests/contract.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from openapi_spec_validator import validate as validate_openapi

from server.app import SERVER
from server.contract.generate import documents
from tests.helpers import Api

ROOT = Path(__file__).resolve().parent.parent
OPENAPI = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
ASYNCAPI = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
EMIT = re.compile(r"""(?:to_patient|to_user|to_room|emit)\(\s*[^,()]+,\s*["']([a-z]+:[a-z-]+)["']""")


def test_every_route_documented_and_every_documented_route_served(api: Api) -> None:
    assert api.app is not None
    served = {(r.resource.canonical, r.method.lower()) for r in api.app.router.routes()
              if r.resource is not None and r.method != "HEAD" and not r.resource.canonical.startswith("/socket.io")}
    documented = {(path, method) for path, ops in OPENAPI["paths"].items() for method in ops}
    assert served - documented == set(), "routes missing from docs/openapi.yaml"
    assert documented - served == set(), "docs/openapi.yaml documents routes the app does not serve"


def test_every_event_documented(api: Api) -> None:
    assert api.app is not None
    handled = set(api.app[SERVER].realtime.router.events)
    ops = ASYNCAPI["operations"]
    received = {name for name, op in ops.items() if op["action"] == "receive"}
    assert handled == received
    pushed = set()
    for package in ("server", "signaling", "media", "devices", "ml"):
        for source in (ROOT / package).rglob("*.py"):
            pushed |= set(EMIT.findall(source.read_text()))
    assert pushed <= {name for name, op in ops.items() if op["action"] == "send"}, "pushed events missing"


async def test_documents_are_served(api: Api) -> None:
    for name, doc in (("openapi.yaml", OPENAPI), ("asyncapi.yaml", ASYNCAPI)):
        status, body = await api.request("GET", f"/api/{name}")
        assert status == 200 and yaml.safe_load(body) == doc
    assert OPENAPI["openapi"].startswith("3.") and ASYNCAPI["asyncapi"] == "3.0.0"


class _StrictLoader(yaml.SafeLoader):
    """Refuses duplicate keys (a merge that repeats a block must not pass silently)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    dupes = {k for k in keys if keys.count(k) > 1}
    assert not dupes, f"duplicate keys {dupes} at line {node.start_mark.line + 1}"
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref" and isinstance(v, str)] + [
            r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_documents_are_well_formed() -> None:
    """No duplicate keys, every local $ref resolves, every message has a payload."""
    for name in ("openapi.yaml", "asyncapi.yaml"):
        doc = yaml.load((ROOT / "docs" / name).read_text(), Loader=_StrictLoader)
        for ref in _refs(doc):
            assert ref.startswith("#/"), ref
            node = doc
            for part in ref[2:].split("/"):
                assert isinstance(node, dict) and part in node, f"{name}: unresolved {ref}"
                node = node[part]
    for key, message in ASYNCAPI["components"]["messages"].items():
        assert "payload" in message, key


def test_documents_are_generated_from_the_code() -> None:
    """Run `healthmate docs` after changing a model, an event, a route or an error code."""
    for name, text in documents().items():
        assert (ROOT / "docs" / name).read_text() == text, f"docs/{name} is stale: run `healthmate docs`"


def test_openapi_document_validates() -> None:
    validate_openapi(OPENAPI)


def test_asyncapi_document_validates_with_the_official_parser() -> None:
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "@asyncapi" / "parser").is_dir():
        pytest.fail("node and the npm packages are needed: `make node_modules/.package-lock.json`")
    done = subprocess.run([node, str(ROOT / "tests" / "node" / "asyncapi_validate.mjs"), str(ROOT / "docs" /
                                                                                           "asyncapi.yaml")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0 and result["parsed"] and result["errors"] == [], result
