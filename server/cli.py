"""``healthmate`` command line: ``serve``, ``migrate``, ``simulate``, ``train`` and ``models`` (see
``server.cli_models``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from aiohttp import web

from server.cli_models import add_commands
from server.core.config import ConfigError, Settings, settings_from


def serve(args: argparse.Namespace) -> None:
    from server.app import create_app

    settings = settings_from(args)
    if args.workers > 1:
        from server.workers import serve_workers

        asyncio.run(serve_workers(settings, args.workers))
        return
    app = create_app(settings)
    logging.getLogger("healthmate").info("serving on http://%s:%s", settings.host, settings.port)
    import uvloop  # the event loop in C: faster sockets and callbacks for every connection

    web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=None,
                handle_signals=True, shutdown_timeout=5, reuse_port=args.reuse_port or None,
                loop=uvloop.new_event_loop())


def migrate(args: argparse.Namespace) -> None:
    from server.app import DOCUMENTS
    from server.infra.migrations import run_migrations
    from server.lifecycle import connected

    settings = settings_from(args)

    async def run() -> None:
        async with connected(settings, DOCUMENTS) as (client, _store):
            applied = await run_migrations(client[settings.mongodb_db])
            print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))

    asyncio.run(run())


def simulate_arguments(p: argparse.ArgumentParser) -> None:
    from devices.simulators.sensor import add_arguments

    add_arguments(p)


def simulate(args: argparse.Namespace) -> None:
    from devices.simulators.sensor import main as simulate_main

    try:
        asyncio.run(simulate_main(args))
    except KeyboardInterrupt:
        pass


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
    p = sub.add_parser("simulate", help="a simulated ECG/PPG device streaming to a server")
    simulate_arguments(p)
    p.set_defaults(func=simulate)
    add_commands(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=Settings().log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except ConfigError as exc:
        print(f"healthmate: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
