"""``healthmate simulate --kind medicine_box``: a medicine box over Socket.IO that says hello with its
drawers, obeys ``box:command`` (acknowledging it) and opens drawers as its scenario says
(``devices.medicine_box.BoxBehaviour``: on time, late, never, or the wrong drawer)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import socketio

from devices.medicine_box import BOX_SCENARIOS, BoxBehaviour, BoxCommand, DrawerAction

log = logging.getLogger("healthmate.simulate")


@dataclass
class BoxRun:
    url: str
    credential: str
    behaviour: BoxBehaviour = field(default_factory=BoxBehaviour)
    hello: dict[str, Any] | None = None  # the server's answer to box:hello
    replies: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)  # (event, drawer, ack)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


async def _act(client: socketio.AsyncClient, run: BoxRun, action: DrawerAction) -> None:
    await asyncio.sleep(action.after_s)
    event = "box:drawer-opened" if action.kind == "open" else "box:drawer-closed"
    reply = await client.call(event, {"drawer": action.drawer, "at_ms": round(time.monotonic() * 1000, 1)},
                              timeout=10)
    run.replies.append((event, action.drawer, reply))
    log.info("%s %d → %s", event, action.drawer, reply.get("data", reply.get("error")))


async def run_box(run: BoxRun, stop: asyncio.Event | None = None, duration_s: float | None = None) -> BoxRun:
    """Connect and behave until ``stop`` is set or ``duration_s`` passes."""
    stop = stop or asyncio.Event()
    client = socketio.AsyncClient(reconnection=False)
    tasks: set[asyncio.Task[Any]] = set()

    @client.on("box:command")
    async def on_command(data: Any) -> dict[str, Any]:
        cmd = BoxCommand.model_validate(data)
        ack, actions = run.behaviour.on_command(cmd)
        log.info("command %s drawer %d (attempt %d)%s", cmd.action, cmd.drawer, cmd.attempt,
                 "" if ack else ": not acknowledging")
        for action in actions:
            task = asyncio.create_task(_act(client, run, action))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if not ack:  # hold the ack back for good: the server must resend
            await run.closed.wait()
            raise asyncio.CancelledError
        return {"ok": True, "command_id": cmd.command_id}

    await client.connect(run.url, auth={"device_token": run.credential}, transports=["websocket"], wait_timeout=10)
    try:
        hello = await client.call("box:hello", run.behaviour.hello(), timeout=10)
        if not hello.get("ok"):
            raise RuntimeError(f"box:hello refused: {hello}")
        run.hello = hello["data"]
        run.connected.set()
        try:
            await asyncio.wait_for(stop.wait(), duration_s)
        except TimeoutError:
            pass
        if tasks:
            await asyncio.wait(tasks, timeout=10)
    finally:
        run.closed.set()
        await client.disconnect()
    return run


async def main(args: argparse.Namespace, credential: str) -> None:
    scenario = args.scenario if args.scenario in BOX_SCENARIOS else "on_time"
    run = BoxRun(args.url, credential, BoxBehaviour(scenario=scenario, drawers=args.drawers))  # type: ignore[arg-type]
    log.info("medicine box (%s, %d drawers) on %s", scenario, args.drawers, args.url)
    await run_box(run, duration_s=args.duration)
    log.info("%d commands, %d drawer events", len(run.behaviour.commands), len(run.replies))
