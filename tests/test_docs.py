"""The protocol documents match the code: every route is in docs/openapi.yaml and every
Socket.IO event, received or pushed, in docs/asyncapi.yaml; both are served."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from server.http import SERVICES
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
    handled = set(api.app[SERVICES].realtime.events)
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
