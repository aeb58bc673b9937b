"""Injected faults: each kind is one coroutine that answers (or fails to answer)
a request the way a misbehaving provider would. Registered by kind name, so
adding a kind is one function, not another branch."""
from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from rlm_ray.sim import responses
from rlm_ray.sim.config import SimConfig

# (request, the well-formed JSON body it would have received, config) -> response
FaultHandler = Callable[[web.Request, bytes, SimConfig], Awaitable[web.StreamResponse]]
FAULT_HANDLERS: dict[str, FaultHandler] = {}


def fault(kind: str) -> Callable[[FaultHandler], FaultHandler]:
    def decorate(fn: FaultHandler) -> FaultHandler:
        FAULT_HANDLERS[kind] = fn
        return fn
    return decorate


class ConnectionDropped(Exception):
    """Raised after a fault closed the socket itself: there is no response to send."""


@fault("500")
async def server_error(request: web.Request, body: bytes, config: SimConfig) -> web.StreamResponse:
    return responses.error(500, "The simulator injected an internal server error.",
                           "server_error", "internal_error")


@fault("503")
async def unavailable(request: web.Request, body: bytes, config: SimConfig) -> web.StreamResponse:
    return responses.error(503, "The simulator injected an overload (service unavailable).",
                           "server_error", "service_unavailable")


@fault("hang")
async def hang(request: web.Request, body: bytes, config: SimConfig) -> web.StreamResponse:
    # The handler is cancelled if the client gives up first (handler_cancellation).
    await asyncio.sleep(config.hang_s)
    _drop(request)


@fault("malformed")
async def malformed(request: web.Request, body: bytes, config: SimConfig) -> web.StreamResponse:
    # A 200 whose JSON stops mid-object: clients must treat it as a failed call.
    return web.Response(status=200, body=body[: len(body) // 2],
                        content_type="application/json")


@fault("truncated")
async def truncated(request: web.Request, body: bytes, config: SimConfig) -> web.StreamResponse:
    # Promise the full body, send half, close: the client sees a short read.
    response = web.StreamResponse(status=200)
    response.content_type = "application/json"
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    _drop(request)


def _drop(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()
    raise ConnectionDropped


@dataclass
class FaultPicker:
    """Which admitted request gets which fault: first the deterministic
    `fail_first_n` (cycling the enabled kinds), then seeded `fail_rate` draws."""

    config: SimConfig
    rng: random.Random = field(init=False)
    _admitted: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(f"faults-{self.config.seed}")

    def pick(self) -> str | None:
        index, self._admitted = self._admitted, self._admitted + 1
        kinds = self.config.faults
        if index < self.config.fail_first_n:
            return kinds[index % len(kinds)]
        if self.config.fail_rate and self.rng.random() < self.config.fail_rate:
            return self.rng.choice(kinds)
        return None
