"""``healthmate train bp`` and ``healthmate models list|activate|rollback``.

``train bp --synthetic N`` trains on a generated cohort (labelled synthetic throughout), ``--from-store``
on this deployment's readings; either prints the training report with the baselines' figures beside
the model's and registers the model only if it beats them (``--activate`` makes it live at once).
Activation is announced on the control bus (Redis, when configured), so running servers switch
without a restart; without Redis they notice within ``model_registry.REFRESH_S``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import socket
import sys
from typing import Any


def _who() -> str:
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


def _registry(settings: Any) -> Any:
    from redis.asyncio import Redis

    from server.infra.pubsub import ControlBus, make_pubsub
    from server.vitals.model_registry import ModelRegistry

    return ModelRegistry(ControlBus(make_pubsub(Redis.from_url(settings.redis_url) if settings.redis_url else None)))


async def _close(registry: Any) -> None:
    redis = getattr(registry.bus.pubsub, "redis", None)
    if redis is not None:
        await redis.aclose()


def train(args: argparse.Namespace) -> None:
    from ml.bp_cohort import describe, generate_cohort
    from ml.bp_model import MODEL_NAME, train_bp
    from server.app import BULK_DOCUMENTS, DOCUMENTS
    from server.core.config import settings_from
    from server.lifecycle import connected
    from server.streaming.history import AnalysisChunk
    from server.vitals.bp_history import BPHistory

    settings = settings_from(args)

    async def run() -> int:
        async with connected(settings, DOCUMENTS, BULK_DOCUMENTS):
            if args.from_store:
                history = BPHistory(AnalysisChunk.get_pymongo_collection)
                cohort = [s async for s in history.store_cohort(args.min_readings)]
                readings = sum(int(s.times.size) for s in cohort)
                data = {"kind": "store", "synthetic": False, "patients": len(cohort), "readings": readings,
                        "description": f"{readings} readings of {len(cohort)} patients from this deployment's store"}
            else:
                cohort = generate_cohort(args.synthetic, args.days, args.seed)
                data = describe(args.synthetic, args.days, args.seed)
            try:
                forecaster, report = await asyncio.to_thread(train_bp, cohort, data)
            except ValueError as exc:
                print(f"healthmate train: {exc}", file=sys.stderr)
                return 2
            print(report.to_text())
            if not report.kept:
                print("\nnot registered: the model does not beat the better baseline")
                return 1
            registry = _registry(settings)
            try:
                mv = await registry.register(MODEL_NAME, forecaster.to_bytes(), forecaster.card, _who())
                print(f"\nregistered {MODEL_NAME} v{mv.version} ({mv.size} bytes)")
                if args.activate:
                    await registry.activate(MODEL_NAME, mv.version, _who())
                    print(f"activated {MODEL_NAME} v{mv.version}")
            finally:
                await _close(registry)
            return 0

    sys.exit(asyncio.run(run()))


def models(args: argparse.Namespace) -> None:
    from server.app import BULK_DOCUMENTS, DOCUMENTS
    from server.core.config import settings_from
    from server.core.errors import ApiError
    from server.lifecycle import connected

    settings = settings_from(args)

    async def run() -> int:
        async with connected(settings, DOCUMENTS, BULK_DOCUMENTS):
            registry = _registry(settings)
            try:
                if args.action == "list":
                    for mv in await registry.versions(args.name):
                        m = mv.metrics
                        print(f"{mv.name} v{mv.version}{' ACTIVE' if mv.active else ''}  "
                              f"{'SYNTHETIC ' if mv.synthetic else ''}{mv.created_at:%Y-%m-%d %H:%M} by {mv.created_by}"
                              f"  MAE sys {m.get('mae_sys', float('nan')):.2f} dia {m.get('mae_dia', float('nan')):.2f}"
                              f"  AUC {m.get('auc', float('nan')):.3f}")
                    return 0
                if args.action == "activate":
                    if args.version is None:
                        print("healthmate models activate: give the version", file=sys.stderr)
                        return 2
                    mv = await registry.activate(args.name, args.version, _who())
                else:
                    mv = await registry.rollback(args.name, _who())
                print(f"active: {mv.name} v{mv.version}")
                return 0
            except ApiError as err:
                print(f"healthmate models: {err.message}", file=sys.stderr)
                return 1
            finally:
                await _close(registry)

    sys.exit(asyncio.run(run()))


def add_commands(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model and register it if it beats the baselines")
    p.add_argument("model", choices=["bp"])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", type=int, metavar="N", help="train on N generated (synthetic) patients")
    source.add_argument("--from-store", action="store_true", help="train on the readings in the store")
    p.add_argument("--days", type=int, default=180, help="days per synthetic patient (default 180)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic cohort (default 0)")
    p.add_argument("--min-readings", type=int, default=20, help="with --from-store: readings a patient needs")
    p.add_argument("--activate", action="store_true", help="make the new version active at once")
    p.add_argument("--data-dir")
    p.set_defaults(func=train)
    p = sub.add_parser("models", help="list, activate or roll back model versions")
    p.add_argument("action", choices=["list", "activate", "rollback"])
    p.add_argument("name", choices=["bp"])
    p.add_argument("version", type=int, nargs="?")
    p.add_argument("--data-dir")
    p.set_defaults(func=models)
