"""Sockets leaving at once: what a disconnect costs python-socketio's client manager, with its own
bookkeeping (every room of the namespace tested for the socket) and with ours (``server/transport/rooms.py``:
the socket's rooms indexed), at SIZES sockets.

In-process, no network: a manager (``socketio.AsyncManager``, or ours) holds SIZES[i] sockets, each in its
own room, its user's room, and, like a patient's or a caregiver's phone, a patient room shared by
PER_PATIENT sockets (the rooms the server puts them in); the timing starts at the first socket's disconnect
and ends after the last (the manager's ``disconnect``, what python-socketio's server calls for each; thread
CPU time). Headline: CPU µs per disconnect at the largest size, python-socketio's and ours, and the growth of
each from the smallest size to the largest (1 = flat; SIZES[-1] / SIZES[0] = per disconnect proportional to
the sockets connected). Median over REPEATS, each size and manager alternating."""

from __future__ import annotations

import asyncio
import time

import socketio

from bench._common import REPEATS, SMOKE, emit, rounded, start
from server.transport.rooms import Manager

SIZES = (200, 800) if SMOKE else (1_000, 4_000)
PER_PATIENT = 3
NAMESPACE = "/"


async def filled(manager: socketio.AsyncManager, sockets: int) -> list[str]:
    """``sockets`` connected to ``manager``, each in its own room, a user room and a patient room."""
    manager.set_server(socketio.AsyncServer(client_manager=manager))
    sids = []
    for i in range(sockets):
        sid = await manager.connect(f"eio-{i}", NAMESPACE)
        await manager.enter_room(sid, NAMESPACE, f"user:{i}")
        await manager.enter_room(sid, NAMESPACE, f"patient:{i // PER_PATIENT}")
        sids.append(sid)
    return sids


async def us_per_disconnect(make: type[socketio.AsyncManager], sockets: int) -> float:
    manager = make()
    sids = await filled(manager, sockets)
    t0 = time.thread_time()
    for sid in sids:
        await manager.disconnect(sid, NAMESPACE)
    spent = time.thread_time() - t0
    assert not manager.rooms, "every socket left every room"
    return spent / sockets * 1e6


def main() -> None:
    budget = start("rooms")
    kinds = {"socketio": socketio.AsyncManager, "indexed": Manager}
    cost: dict[str, dict[int, list[float]]] = {k: {n: [] for n in SIZES} for k in kinds}
    for _ in budget.rounds(REPEATS, reserve=2):
        for n in SIZES:
            for kind, make in kinds.items():
                cost[kind][n].append(asyncio.run(us_per_disconnect(make, n)))
    small, large = SIZES

    def med(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    emit(budget, {"socketio_us_per_disconnect": cost["socketio"][large],
                  "indexed_us_per_disconnect": cost["indexed"][large]},
         sockets=large, smaller=small,
         socketio_growth=rounded(med(cost["socketio"][large]) / med(cost["socketio"][small])),
         indexed_growth=rounded(med(cost["indexed"][large]) / med(cost["indexed"][small])),
         socketio_us_per_disconnect_smaller=rounded(med(cost["socketio"][small])),
         indexed_us_per_disconnect_smaller=rounded(med(cost["indexed"][small])),
         rooms_per_socket=3, store="none (in-process)")


if __name__ == "__main__":
    main()
