"""Where the limiter lives: in this process, or in one named Ray actor per model
key (`rlm-ray-limiter/<model key>` in namespace "rlm_ray") shared by every
worker of the cluster.

The actor is only ever asked short questions ("when may I go?"); callers sleep
locally. Concurrent asks from one process are coalesced into one actor call
while the previous one is in flight, and their answers' settles while other
calls are still out, so a fan-out of hundreds costs a handful of round trips
instead of hundreds, with no lease to over-reserve."""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from rlm_ray.llm.config import GatewayConfig
from rlm_ray.llm.limiter import Booking, Limits, RateLimiter

NAMESPACE = "rlm_ray"


@dataclass
class Ticket:
    estimated_tokens: float
    ref: int = 0          # the booking's name in the limiter (burst pacing follows the call)


class Limiter(Protocol):
    async def acquire(self, prompt_tokens: int, max_output: int | None) -> Ticket: ...
    def settle(self, ticket: Ticket, actual_tokens: int, completion_tokens: int | None,
               done_at: float | None = None) -> None: ...
    def penalize(self, retry_after_s: float | None) -> None: ...


MAX_REBOOKINGS = 10   # then send anyway: a starved host must still make progress
# Answers of a wave arrive over a second or so; settling each in its own actor
# call cost a round trip per model call. While other calls of this client are
# still out, a settle waits this long for company. Settles carry their own
# timestamps, so sending them later changes no figure; a limiter that learns of
# a refund late only paces more carefully meanwhile.
SETTLE_COALESCE_S = 0.02


class _Client:
    async def _reserve(self, prompt_tokens: int, max_output: int | None) -> Booking:
        raise NotImplementedError

    async def acquire(self, prompt_tokens: int, max_output: int | None) -> Ticket:
        late = 0
        while True:
            booking = await self._reserve(prompt_tokens, max_output)
            delay = booking.at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if not booking.booked:
                continue          # only quoted: ask again, closer to our turn
            # Woke up too late for our slot: its time has passed, book a fresh one
            # (the missed slot stays spent: under-use is safe, bunching is not).
            ticket = Ticket(booking.estimated_tokens, booking.ref)
            if time.time() - booking.at <= booking.late_tolerance_s or late >= MAX_REBOOKINGS:
                return ticket
            self.settle(ticket, int(booking.estimated_tokens), None, done_at=booking.at)
            late += 1


class LocalLimiter(_Client):
    """In-process: one RateLimiter behind a lock (threads and event loops share it)."""

    def __init__(self, limits: Limits) -> None:
        self.core = RateLimiter(limits)
        self._lock = threading.Lock()

    def configure(self, limits: Limits) -> None:
        with self._lock:
            self.core.configure(limits)

    async def _reserve(self, prompt_tokens: int, max_output: int | None) -> Booking:
        with self._lock:
            return self.core.reserve(prompt_tokens, max_output)

    def settle(self, ticket: Ticket, actual_tokens: int, completion_tokens: int | None,
               done_at: float | None = None) -> None:
        with self._lock:
            self.core.settle(ticket.estimated_tokens, actual_tokens, completion_tokens,
                             ticket.ref, done_at or time.time())

    def penalize(self, retry_after_s: float | None) -> None:
        with self._lock:
            self.core.penalize(retry_after_s)

    def stats(self) -> dict:
        with self._lock:
            return self.core.stats()


class LimiterActor:
    """Ray actor body: a RateLimiter answering in call order (one caller's penalize
    is seen before its next reserve)."""

    def __init__(self, limits: Limits) -> None:
        self.core = RateLimiter(limits)
        self.calls = {"reserve_many": 0, "settle_many": 0}   # round trips, for stats()

    def configure(self, limits: Limits) -> None:
        self.core.configure(limits)

    def reserve_many(self, asks: list[tuple[int, int | None]]) -> list[Booking]:
        self.calls["reserve_many"] += 1
        return self.core.reserve_many(asks)

    def settle_many(self, items: list[tuple]) -> None:
        self.calls["settle_many"] += 1
        self.core.settle_many(items)

    def penalize(self, retry_after_s: float | None) -> None:
        self.core.penalize(retry_after_s)

    def stats(self) -> dict:
        return {**self.core.stats(), "actor_calls": dict(self.calls)}


class SharedLimiter(_Client):
    """Client of the limiter actor for one event loop of this process."""

    def __init__(self, actor) -> None:
        self._actor = actor
        self._asks: list[tuple[tuple[int, int | None], asyncio.Future]] = []
        # (estimated, actual, completion tokens, booking ref, answered at)
        self._settles: list[tuple[float, float, int | None, int, float]] = []
        self._flusher: asyncio.Task | None = None
        self._settle_timer: asyncio.TimerHandle | None = None
        self._out = 0   # calls acquired and not yet settled (a hint: only decides when to send)

    async def acquire(self, prompt_tokens: int, max_output: int | None) -> Ticket:
        ticket = await super().acquire(prompt_tokens, max_output)
        self._out += 1
        return ticket

    async def _reserve(self, prompt_tokens: int, max_output: int | None) -> Booking:
        future = asyncio.get_running_loop().create_future()
        self._asks.append(((prompt_tokens, max_output), future))
        self._kick()
        return await future

    def settle(self, ticket: Ticket, actual_tokens: int, completion_tokens: int | None,
               done_at: float | None = None) -> None:
        self._settles.append((ticket.estimated_tokens, float(actual_tokens), completion_tokens,
                              ticket.ref, done_at or time.time()))
        self._out = max(0, self._out - 1)
        if self._out == 0:   # nothing else is coming soon (or this process may be ending)
            self._flush_settles()
        elif self._settle_timer is None:
            self._settle_timer = asyncio.get_running_loop().call_later(
                SETTLE_COALESCE_S, self._flush_settles)

    def penalize(self, retry_after_s: float | None) -> None:
        self._flush_settles()
        self._actor.penalize.remote(retry_after_s)

    def _kick(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    def _flush_settles(self) -> None:
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        if self._settles:
            batch, self._settles = self._settles, []
            self._actor.settle_many.remote(batch)   # fire and forget; the actor keeps call order

    async def _flush(self) -> None:
        # Whatever piles up while one round trip is in flight goes in the next one.
        while self._asks or self._settles:
            self._flush_settles()
            if not self._asks:
                return
            batch, self._asks = self._asks, []
            try:
                answers = await self._actor.reserve_many.remote([ask for ask, _ in batch])
            except Exception as exc:  # noqa: BLE001 - hand the failure to every waiter
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), answer in zip(batch, answers):
                if not future.done():
                    future.set_result(answer)


def _limits(config: GatewayConfig, model: str) -> Limits:
    return Limits(config.rpm, config.tpm, config.window_s, config.pacing_for(model))


_lock = threading.Lock()
_local: dict[str, LocalLimiter] = {}
_actors: dict[str, object] = {}
_clients: dict[tuple[int, str, Limits], tuple[asyncio.AbstractEventLoop, SharedLimiter]] = {}


def _use_ray(config: GatewayConfig) -> bool:
    if config.shared_limiter is False:
        return False
    import ray

    return ray.is_initialized()


def limiter_actor(key: str, limits: Limits):
    """Get or create the cluster's limiter actor for `key` and push our limits to it
    (the latest configuration wins, so a rerun with new limits takes effect)."""
    import ray

    with _lock:
        actor = _actors.get(key)
        if actor is None:
            actor_cls = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(LimiterActor)
            from rlm_ray._ray import on_head_node

            actor = actor_cls.options(
                name=f"rlm-ray-limiter/{key}", namespace=NAMESPACE, lifetime="detached",
                get_if_exists=True, **on_head_node()).remote(limits)
            _actors[key] = actor
    actor.configure.remote(limits)
    return actor


def limiter_for(model: str, config: GatewayConfig) -> Limiter | None:
    """The limiter for this model + endpoint, or None when no limits are set."""
    if not config.rpm and not config.tpm:
        return None
    key = config.limiter_key(model)
    limits = _limits(config, model)
    if _use_ray(config):
        # asyncio futures belong to one loop, so each loop gets its own client.
        loop = asyncio.get_running_loop()
        entry = _clients.get((id(loop), key, limits))
        if entry is None or entry[0] is not loop:
            entry = _clients[(id(loop), key, limits)] = (loop, SharedLimiter(limiter_actor(key, limits)))
        return entry[1]
    with _lock:
        local = _local.get(key)
        if local is None:
            local = _local[key] = LocalLimiter(limits)
    local.configure(limits)
    return local
