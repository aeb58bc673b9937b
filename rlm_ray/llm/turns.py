"""TurnGate: at most N callers pass per turn of the event loop.

A wave of hundreds of calls wakes hundreds of tasks in one loop turn, and the
loop runs every ready task before it polls its sockets again. Each call's
setup (token count, litellm's request building: a few ms of CPU) then runs
for the whole wave before the first request leaves, and the provider's
latency starts only after all of it. Passing a few calls per turn lets the
loop poll between them: the first requests leave at once, and the later ones'
setup overlaps the earlier ones' wait. It never limits how many calls are in
flight: a slot is held for one loop turn, not for the call.
"""
from __future__ import annotations

import asyncio
import weakref

PER_TURN = 16   # ~16 setups (tens of ms of CPU) between two polls of the sockets


class TurnGate:
    def __init__(self, per_turn: int = PER_TURN) -> None:
        self._slots = asyncio.Semaphore(per_turn)

    async def pass_turn(self) -> None:
        await self._slots.acquire()
        # Runs on the next turn (callbacks queued during a turn wait for the
        # next one), after the loop has polled its sockets.
        asyncio.get_running_loop().call_soon(self._slots.release)


_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, TurnGate]] = (
    weakref.WeakKeyDictionary())


def turn_gate(name: str) -> TurnGate:
    """This loop's gate called `name` (an asyncio primitive belongs to one loop)."""
    gates = _gates.setdefault(asyncio.get_running_loop(), {})
    gate = gates.get(name)
    if gate is None:
        gate = gates[name] = TurnGate()
    return gate
