"""The browser apps' files: the clinician dashboard at ``/`` (its ES modules and CSS from ``server/static/``),
the patients' and caregivers' installable app at ``/app/`` (``server/static/app/``: its page, modules, manifest
and service worker, whose scope is ``/app/``), and the browser libraries they use (socket.io client, uPlot,
lean-qr, jsQR) straight from ``node_modules/``, installed from npm by the Makefile (``package.json`` at the
repository root) and never copied into the repository."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from aiohttp import web

from server.core.errors import ApiError, not_found
from server.core.wire import Wire
from server.transport.mount import Mount

STATIC = Path(__file__).resolve().parent / "static"
APP = STATIC / "app"
NODE_MODULES = Path(__file__).resolve().parent.parent / "node_modules"
# The only files served from node_modules: public name -> path inside it.
VENDOR = {
    "socket.io.esm.min.js": "socket.io-client/dist/socket.io.esm.min.js",
    "uPlot.esm.js": "uplot/dist/uPlot.esm.js",
    "uPlot.min.css": "uplot/dist/uPlot.min.css",
    "lean-qr.mjs": "lean-qr/index.mjs",  # the app's link-code QR (encoder)
    "jsQR.js": "jsqr/dist/jsQR.js",  # the app's QR scanner (decoder; a classic script defining jsQR)
}
TYPES = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
         ".png": "image/png", ".svg": "image/svg+xml", ".webmanifest": "application/manifest+json"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")  # one flat folder: no way out of it
NO_CACHE = {"Cache-Control": "no-cache"}  # revalidated each load, so a deploy is seen at once
# Every response: scripts and styles only from this origin (no inline script, so an injected <script> or
# on*= attribute does not run), no framing (clickjacking), no referrer leaking ids in URLs, no sniffing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
HSTS = "max-age=31536000; includeSubDomains"


def _file(path: Path) -> web.FileResponse:
    content_type = TYPES.get(path.suffix)
    if content_type is None or not path.is_file():
        raise not_found("file")
    return web.FileResponse(path, headers={**NO_CACHE, "Content-Type": f"{content_type}; charset=utf-8"
                                           if content_type.startswith("text/") else content_type})


async def index(request: web.Request) -> web.FileResponse:
    """The clinician dashboard (an HTML page; its modules load from /static/ and /vendor/)."""
    return _file(STATIC / "index.html")


async def static_file(request: web.Request) -> web.FileResponse:
    """One of the dashboard's own files (ES modules, CSS, images)."""
    name = request.match_info["name"]
    if not NAME.fullmatch(name):
        raise not_found("file")
    return _file(STATIC / name)


async def app_index(request: web.Request) -> web.FileResponse:
    """The patients' and caregivers' app (an installable web app)."""
    return _file(APP / "index.html")


async def app_redirect(request: web.Request) -> web.Response:
    """Redirects to `/app/`."""
    raise web.HTTPPermanentRedirect("/app/")


async def app_file(request: web.Request) -> web.FileResponse:
    """One of the app's files (scripts, styles, manifest, service worker, icons)."""
    name = request.match_info["name"]
    if not NAME.fullmatch(name):
        raise not_found("file")
    return _file(APP / name)


async def vendor_file(request: web.Request) -> web.FileResponse:
    """One of the dashboard's and the app's browser libraries from npm (`not_installed` until `npm ci` ran).

    Only `socket.io.esm.min.js` (socket.io-client), `uPlot.esm.js` and `uPlot.min.css` (uplot), `lean-qr.mjs`
    (lean-qr, the app's QR encoder) and `jsQR.js` (jsqr, the app's QR decoder)."""
    rel = VENDOR.get(request.match_info["name"])
    if rel is None:
        raise not_found("file")
    if not (NODE_MODULES / rel).is_file():
        raise ApiError("not_installed", "The dashboard's npm packages are not installed: run `make run` "
                       "(or `npm ci` at the repository root)", 503)
    return _file(NODE_MODULES / rel)


class ServiceInfo(Wire):
    service: Literal["healthmate"]
    dashboard: str
    app: str
    openapi: str
    asyncapi: str


async def service_info(request: web.Request) -> web.Response:
    """What this service is and where its documents are."""
    return web.json_response({"service": "healthmate", "dashboard": "/", "app": "/app/",
                              "openapi": "/api/openapi.yaml", "asyncapi": "/api/asyncapi.yaml"})


def _behind_tls(request: web.Request, trust_forwarded: bool) -> bool:
    return request.secure or (trust_forwarded and request.headers.get("X-Forwarded-Proto", "").lower() == "https")


def setup(app: web.Application, m: Mount, trust_forwarded: bool = False) -> None:
    async def harden(request: web.Request, response: web.StreamResponse) -> None:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if _behind_tls(request, trust_forwarded):  # HSTS only means something over TLS
            response.headers.setdefault("Strict-Transport-Security", HSTS)

    app.on_response_prepare.append(harden)
    m.route("GET", "/", index, media="text/html", public=True)
    m.route("GET", "/static/{name}", static_file, media="*/*", public=True)
    m.route("GET", "/vendor/{name}", vendor_file, media="*/*", public=True)
    m.route("GET", "/app", app_redirect, status=308, public=True)
    m.route("GET", "/app/", app_index, media="text/html", public=True)
    m.route("GET", "/app/{name}", app_file, media="*/*", public=True)
    m.route("GET", "/api", service_info, ServiceInfo, public=True)
