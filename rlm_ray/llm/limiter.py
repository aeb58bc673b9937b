"""The rate limiter's state machine: token buckets for requests and tokens per
window, scheduled GCRA-style (a caller reserves and is told when to go; nobody
holds a waiter inside the limiter), with a shared pause + multiplicative slow
down on a 429 that recovers additively.

Why capacity is taken *out of* the rate: a provider that counts over a sliding
window of W seconds sees at most `capacity + rate * W` units in any window
from a bucket of that capacity and refill rate. So we refill at
(limit - capacity) / W, minus a small margin for the jitter between our
schedule and the provider's clock, and never exceed the limit in any window,
whether the provider slides, fixes or buckets its window.

Burst pacing (burst.py) is the other schedule: spend the provider's whole
window at once, then one unit per unit leaving the window. Each resource is
paced by the class PACERS names for the limits' `pacing`.

The same class runs in-process (behind a lock) or as the body of the named
Ray actor that all workers share (see limiter_client.py)."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from rlm_ray.llm.burst import WindowLog

SLOWDOWN = 0.8          # rate factor applied per 429 episode
MIN_FACTOR = 0.1
RECOVERY_PER_WINDOW = 0.5   # factor regained per window of clean traffic
SCHEDULE_MARGIN = 0.01  # share of the limit left for clock jitter between us and the provider
JITTER_ALLOWANCE_S = 1.0  # ...but at least this many seconds' worth (a starved host sends late)
DEFAULT_OUTPUT_TOKENS = 256  # output estimate until real completions teach us better
HORIZON_SHARE = 0.1     # book at most this share of a window ahead...
MAX_HORIZON_S = 5.0     # ...and never more than this many seconds


class Booking(NamedTuple):
    at: float                # booked: when to send; not booked: when to ask again
    estimated_tokens: float
    late_tolerance_s: float  # a booked caller waking later than at + this must book again
    booked: bool
    ref: int = 0             # names the booking when it is settled (burst pacing tracks calls)


@dataclass
class Bucket:
    """One resource (requests or tokens): `tat` is when the bucket is next full."""

    limit: float
    window_s: float
    burst_share: float
    tat: float = 0.0
    capacity: float = field(init=False)
    rate: float = field(init=False)     # units per second at factor 1
    slack_s: float = field(init=False)  # how much send-time jitter the schedule absorbs
    # (send time, units) of the last two windows: only requests bigger than the
    # bucket look at them (start_at).
    _recent: deque = field(default_factory=deque, init=False, repr=False)
    _recent_units: float = field(default=0.0, init=False, repr=False)
    # A quarter of the slack: callers sent late (but within this) bunch into later
    # windows; the rest of the slack is for jitter we cannot see (provider side,
    # the time between our check and the bytes leaving).
    late_share = 0.25

    def __post_init__(self) -> None:
        self.capacity = max(1.0, self.limit * self.burst_share)
        # Leave room for requests reaching the provider later than scheduled (a busy
        # event loop, a slow host): a share of the limit, and never less than
        # JITTER_ALLOWANCE_S worth of traffic (that matters for small limits).
        margin = max(SCHEDULE_MARGIN * self.limit, JITTER_ALLOWANCE_S * self.limit / self.window_s)
        usable = max(self.limit - self.capacity - margin, self.limit * 0.5)
        self.rate = usable / self.window_s
        self.slack_s = (self.limit - usable) / self.rate

    def start_at(self, now: float, units: float, factor: float) -> float:
        """Earliest time `units` fit: the bucket must hold min(units, capacity).
        A request bigger than the bucket also waits until the sends of the last
        window leave room for it under what the schedule allows in a window
        (rate * window + capacity): sent as soon as the bucket is full, it would
        land on top of a window's worth of paid traffic and overshoot by its size."""
        rate = self.rate * factor
        at = max(now, self.tat - (self.capacity - min(units, self.capacity)) / rate)
        if units <= self.capacity:
            return at
        allowed = rate * self.window_s + self.capacity
        counted_s = self.window_s + self.late_share * self.slack_s   # a booking may be sent late
        self._forget_before(now - counted_s)
        live = self._recent_units
        for sent_at, sent in self._recent:   # in booking order: out of order only waits longer
            if live + units <= allowed:
                break
            live -= sent
            at = max(at, sent_at + counted_s)
        return at

    def take(self, at: float, units: float, factor: float, ref: int = 0) -> None:
        self.tat = max(self.tat, at) + units / (self.rate * factor)
        # Sends within a hundredth of a window share one entry dated by the latest
        # (it then counts a little longer: the safe side), so the log stays ~200 long.
        if self._recent and at - self._recent[-1][0] < self.window_s / 100:
            last_at, last_units = self._recent.pop()
            self._recent.append((max(at, last_at), last_units + units))
        else:
            self._recent.append((at, units))
        self._recent_units += units
        self._forget_before(at - 2 * self.window_s)

    def _forget_before(self, when: float) -> None:
        # Bookings are roughly in time order; one booked out of order is forgotten late.
        while self._recent and self._recent[0][0] <= when:
            self._recent_units -= self._recent.popleft()[1]

    def follow(self, old: object, now: float) -> None:
        """Take over from the pacer of the old limits. Start from an empty bucket,
        and never before the old schedule: whatever went before still counts in
        the provider's window, and so does the old bucket's log of sends."""
        self.tat = max(now + self.capacity / self.rate, old.tat if isinstance(old, Bucket) else 0.0)
        if isinstance(old, Bucket):
            self._recent, self._recent_units = old._recent, old._recent_units

    def done(self, ref: int, done_at: float) -> None:
        pass   # a bucket forgets its bookings once taken

    def adjust(self, units: float, factor: float) -> None:
        # Real usage differed from the estimate: pay the debt or get the refund.
        self.tat += units / (self.rate * factor)

    def drain_until(self, when: float) -> None:
        # Resume from an empty bucket: the provider's window is full right now.
        self.tat = max(self.tat, when + self.capacity / self.rate)
        self._recent.append((when - self.window_s, self.limit))
        self._recent_units += self.limit


# How each pacing mode (config.PACING_MODES) schedules one resource (requests or tokens).
PACERS = {"even": Bucket, "burst": WindowLog}


@dataclass(frozen=True)
class Limits:
    rpm: float | None
    tpm: float | None
    window_s: float = 60.0
    pacing: str = "even"


class RateLimiter:
    def __init__(self, limits: Limits, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.limits = None
        self.buckets: dict[str, Bucket] = {}
        self.factor = 1.0
        self.paused_until = 0.0
        self._factor_at = clock()
        self.penalties = 0
        self.reservations = 0
        self._completion_mean = float(DEFAULT_OUTPUT_TOKENS)
        self._completions_seen = 0
        self.configure(limits)

    def configure(self, limits: Limits) -> None:
        if limits == self.limits:
            return
        now = self._clock()
        wanted = {"requests": (limits.rpm, 0.01), "tokens": (limits.tpm, 0.03)}
        buckets = {}
        pacer = PACERS[limits.pacing]
        for name, (limit, burst_share) in wanted.items():
            if not limit:
                continue
            old = self.buckets.get(name)
            bucket = buckets[name] = pacer(limit, limits.window_s, burst_share)
            if isinstance(bucket, Bucket):
                bucket.follow(old, now)
            elif old is not None:
                # Traffic under the old limits is still in the provider's window. A
                # limiter made afresh assumes an empty window: a previous run's
                # traffic there shows as one 429 episode (pause, slow down, recover).
                bucket.drain_until(now)
        self.limits, self.buckets = limits, buckets
        self.late_tolerance_s = min(b.late_share * b.slack_s for b in buckets.values())
        self.horizon_s = min(HORIZON_SHARE * limits.window_s, MAX_HORIZON_S)

    def _current_factor(self, now: float) -> float:
        if now > self.paused_until and self.factor < 1.0:
            regained = (now - max(self._factor_at, self.paused_until)) * RECOVERY_PER_WINDOW / self.limits.window_s
            self.factor = min(1.0, self.factor + max(0.0, regained))
        self._factor_at = now
        return self.factor

    def estimate_tokens(self, prompt_tokens: int, max_output: int | None) -> float:
        return float(prompt_tokens + (max_output if max_output else self._completion_mean))

    def reserve(self, prompt_tokens: int = 0, max_output: int | None = None) -> Booking:
        """Book one request if its slot is within the booking horizon.

        Slots further out are only quoted (`booked=False`, `at` = when to ask again):
        bookings made far ahead would freeze today's token estimate (and a caller
        that has gone away) into the schedule, while a later ask sees the refunds
        real usage brought in meanwhile. `at` is wall-clock (time.time) so callers
        in other processes of the node agree on it."""
        now = self._clock()
        factor = self._current_factor(now)
        tokens = self.estimate_tokens(prompt_tokens, max_output)
        amounts = {"requests": 1.0, "tokens": tokens}
        go_at = max(now, self.paused_until)
        for name, bucket in self.buckets.items():
            go_at = max(go_at, bucket.start_at(now, amounts[name], factor))
        if go_at > now + self.horizon_s:
            return Booking(go_at - self.horizon_s / 2, tokens, self.late_tolerance_s, False)
        self.reservations += 1
        for name, bucket in self.buckets.items():
            bucket.take(go_at, amounts[name], factor, self.reservations)
        return Booking(go_at, tokens, self.late_tolerance_s, True, self.reservations)

    def reserve_many(self, asks: list[tuple[int, int | None]]) -> list[Booking]:
        return [self.reserve(prompt, max_out) for prompt, max_out in asks]

    def settle(self, estimated_tokens: float, actual_tokens: float, completion_tokens: int | None = None,
               ref: int = 0, done_at: float | None = None) -> None:
        """Real usage of a booked call; `ref` names its booking, `done_at` when it
        answered (or failed, or was abandoned unsent)."""
        if ref:
            done_at = self._clock() if done_at is None else done_at
            for bucket in self.buckets.values():
                bucket.done(ref, done_at)
        if completion_tokens is not None:
            # Running mean of outputs: the next estimates for calls without max_tokens.
            self._completions_seen += 1
            weight = 1.0 / min(self._completions_seen, 100)
            self._completion_mean += (completion_tokens - self._completion_mean) * weight
        bucket = self.buckets.get("tokens")
        if bucket is not None and actual_tokens != estimated_tokens:
            bucket.adjust(actual_tokens - estimated_tokens, self._current_factor(self._clock()))

    def settle_many(self, items: list[tuple]) -> None:
        for item in items:
            self.settle(*item)

    def penalize(self, retry_after_s: float | None) -> None:
        """A 429 reached someone: everyone pauses, and the rate drops once per episode
        (a storm of 429s from one full window is one signal, not fifty)."""
        now = self._clock()
        new_episode = now >= self.paused_until
        pause = retry_after_s if retry_after_s and retry_after_s > 0 else 1.0
        self.paused_until = max(self.paused_until, now + pause)
        if new_episode:
            self.factor = max(MIN_FACTOR, self._current_factor(now) * SLOWDOWN)
            self.penalties += 1
        for bucket in self.buckets.values():
            bucket.drain_until(self.paused_until)

    def stats(self) -> dict:
        return {"limits": self.limits.__dict__, "factor": self.factor,
                "paused_until": self.paused_until, "penalties": self.penalties,
                "reservations": self.reservations, "completion_mean": self._completion_mean}
