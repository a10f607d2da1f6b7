"""The browser apps' files: the clinician dashboard at ``/`` (its ES modules and CSS from ``server/static/``),
the patients' and caregivers' installable app at ``/app/`` (``server/static/app/``: its page, modules, manifest
and service worker, whose scope is ``/app/``), and the browser libraries they use (socket.io client, uPlot,
lean-qr, jsQR) straight from ``node_modules/``, installed from npm by the Makefile (``package.json`` at the
repository root) and never copied into the repository."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from server.core.errors import ApiError, not_found

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
    return _file(STATIC / "index.html")


async def static_file(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if not NAME.fullmatch(name):
        raise not_found("file")
    return _file(STATIC / name)


async def app_index(request: web.Request) -> web.FileResponse:
    return _file(APP / "index.html")


async def app_redirect(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect("/app/")


async def app_file(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if not NAME.fullmatch(name):
        raise not_found("file")
    return _file(APP / name)


async def vendor_file(request: web.Request) -> web.FileResponse:
    rel = VENDOR.get(request.match_info["name"])
    if rel is None:
        raise not_found("file")
    if not (NODE_MODULES / rel).is_file():
        raise ApiError("not_installed", "The dashboard's npm packages are not installed: run `make run` "
                       "(or `npm ci` at the repository root)", 503)
    return _file(NODE_MODULES / rel)


async def service_info(request: web.Request) -> web.Response:
    return web.json_response({"service": "healthmate", "dashboard": "/", "app": "/app/", "openapi": "/api/openapi.yaml",
                              "asyncapi": "/api/asyncapi.yaml"})


def _behind_tls(request: web.Request, trust_forwarded: bool) -> bool:
    return request.secure or (trust_forwarded and request.headers.get("X-Forwarded-Proto", "").lower() == "https")


def setup(app: web.Application, trust_forwarded: bool = False) -> None:
    async def harden(request: web.Request, response: web.StreamResponse) -> None:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if _behind_tls(request, trust_forwarded):  # HSTS only means something over TLS
            response.headers.setdefault("Strict-Transport-Security", HSTS)

    app.on_response_prepare.append(harden)
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/vendor/{name}", vendor_file)
    app.router.add_get("/app", app_redirect)
    app.router.add_get("/app/", app_index)
    app.router.add_get("/app/{name}", app_file)
    app.router.add_get("/api", service_info)
