"""``healthmate`` command line: ``serve``, ``migrate``, ``org create``, ``simulate``, ``docs``, ``train`` and ``models``
(see ``server.cli_models``)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys

from aiohttp import web

from server.cli_models import add_commands
from server.core.config import ConfigError, Settings, settings_from
from server.core.logs import setup_logging


def serve(args: argparse.Namespace) -> None:
    from server.app import create_app

    settings = settings_from(args)
    if args.workers > 1:
        from server.workers import serve_workers

        asyncio.run(serve_workers(settings, args.workers))
        return
    app = create_app(settings)
    app.on_startup.append(_long_lived)  # (after the start-up of every component)
    logging.getLogger("healthmate").info("serving on http://%s:%s", settings.host, settings.port)
    web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=None,
                handle_signals=True, shutdown_timeout=5, reuse_port=args.reuse_port or None,
                loop=event_loop(settings))


def event_loop(settings: Settings) -> asyncio.AbstractEventLoop:
    """The standard loop with urgent work's callbacks first (``server.core.urgent_loop``), or, with
    ``HEALTHMATE_URGENT_FIRST=off``, uvloop: in C, faster on every event, but in the order they come
    (docs/operations.md, "The morning rush": what each costs and buys)."""
    if settings.urgent_first:
        from server.core.urgent_loop import UrgentFirstLoop

        return UrgentFirstLoop()
    import uvloop

    return uvloop.new_event_loop()


GC_THRESHOLDS = (10_000, 20, 100)  # Python's own: (700, 10, 10)


async def _long_lived(_app: web.Application) -> None:
    """Fewer, shorter pauses of the garbage collector. What imports and start-up built lives as long as the
    process: it is moved out of the collector's sight (``gc.freeze``), so full collections no longer walk
    it; and collections run less often (``GC_THRESHOLDS``: a young generation of 10,000 objects rather than
    700, a full collection considered after 100 middle ones rather than 10). Under the ``rush`` bench at 400
    patients, Python's defaults ran full collections that paused the event loop 150-550 ms each while
    collecting nothing (the sockets, sessions and pending acknowledgements of the rush are all alive), two
    or three a minute, and an alert raised meanwhile waited for them; with these, none ran in the rush
    (docs/operations.md). Cyclic garbage is still collected, later; the rest is freed as ever, at once."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def migrate(args: argparse.Namespace) -> None:
    from server.app import BULK_DOCUMENTS, DOCUMENTS
    from server.infra.migrations import run_migrations
    from server.lifecycle import connected

    settings = settings_from(args)

    async def run() -> None:
        async with connected(settings, DOCUMENTS, BULK_DOCUMENTS) as stores:
            applied = await run_migrations(stores.client[settings.mongodb_db], BULK_DOCUMENTS)
            print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))

    asyncio.run(run())


def org_create(args: argparse.Namespace) -> None:
    """The organisation and its first admin: an existing account at once, or a single-use invitation link for
    the email, printed (and mailed where SMTP is configured)."""
    from server.app import BULK_DOCUMENTS, DOCUMENTS
    from server.care.orgs import create_org, invitation_link
    from server.core.errors import ApiError
    from server.infra.mailer import Mailer
    from server.lifecycle import connected

    settings = settings_from(args)
    mailer = Mailer.from_settings(settings)

    async def run() -> None:
        async with connected(settings, DOCUMENTS, BULK_DOCUMENTS):
            org, admin, token = await create_org(args.name, args.admin, settings.invitation_ttl_s)
        print(f"organisation {org.name!r} created: {org.id}")
        if admin is not None:
            print(f"admin: {admin.email} (an existing account, now this organisation's admin and a verified clinician)")
            return
        assert token is not None
        link = invitation_link(settings.public_url or f"http://{settings.host}:{settings.port}", token)
        print(f"admin: {args.admin} has no account yet; this single-use link (valid {settings.invitation_ttl_s} s) "
              f"makes it:\n{link}")
        if mailer is not None and await mailer.send(args.admin.strip().lower(), f"Administer {org.name} on Health Mate",
                                                    f"Open this link to make your account:\n{link}\n"):
            print("(mailed to it too)")

    try:
        asyncio.run(run())
    except (ApiError, ValueError) as exc:
        print(f"healthmate org create: {exc}", file=sys.stderr)
        sys.exit(2)


def simulate_arguments(p: argparse.ArgumentParser) -> None:
    from devices.simulators.sensor import add_arguments

    add_arguments(p)


def simulate(args: argparse.Namespace) -> None:
    from devices.simulators.sensor import main as simulate_main

    try:
        asyncio.run(simulate_main(args))
    except KeyboardInterrupt:
        pass


def docs(args: argparse.Namespace) -> None:
    """Write docs/asyncapi.yaml and docs/openapi.yaml from the code (the models, the events' and routes'
    registrations, the error registry), then the TypeScript client's types from them (with node, once the
    npm packages are installed)."""
    import shutil
    import subprocess

    from server.contract.generate import DOCS, write

    written = write()
    print("written: " + (", ".join(str(p) for p in written) if written else "nothing (up to date)"))
    root = DOCS.parent
    node, generator = shutil.which("node"), root / "clients" / "typescript" / "generate.mjs"
    if node and generator.exists() and (root / "node_modules" / "json-schema-to-typescript").is_dir():
        subprocess.run([node, str(generator)], check=True, cwd=root)
    else:
        print("clients/typescript/src/contract.ts not regenerated: needs node and `npm ci`")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="healthmate", description="Health Mate real-time server")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the server")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--data-dir")
    p.add_argument("--workers", type=int, default=1, help="server processes on one port (needs Redis)")
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set by --workers for its children
    p.add_argument("--demo", action="store_true",
                   help="development: a demo patient streaming from simulated devices (see README)")
    p.set_defaults(func=serve)
    p = sub.add_parser("migrate", help="apply data migrations and index changes, then exit")
    p.add_argument("--data-dir")
    p.set_defaults(func=migrate)
    p = sub.add_parser("org", help="organisations (clinics, home-care agencies) that vouch for clinicians")
    org_sub = p.add_subparsers(dest="org_command", required=True)
    p = org_sub.add_parser("create", help="make an organisation with its first admin")
    p.add_argument("name")
    p.add_argument("--admin", required=True, metavar="EMAIL", help="an existing account, or the email to invite")
    p.add_argument("--data-dir")
    p.set_defaults(func=org_create)
    p = sub.add_parser("simulate", help="a simulated ECG/PPG device streaming to a server")
    simulate_arguments(p)
    p.set_defaults(func=simulate)
    p = sub.add_parser("docs", help="write docs/asyncapi.yaml and docs/openapi.yaml from the code")
    p.set_defaults(func=docs)
    add_commands(sub)
    args = parser.parse_args(argv)
    setup_logging(Settings().log_level)  # one line per record: control characters escaped
    try:
        args.func(args)
    except ConfigError as exc:
        print(f"healthmate: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
