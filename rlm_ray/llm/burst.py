"""Burst pacing: for providers that admit `limit` units in ANY window of
`window_s` seconds (a sliding window, or a token bucket of that size refilled
over the window, as Anthropic-style limits are), the fastest safe schedule is
to spend the whole limit at once, then send each further unit when the one it
replaces has left the window. A schedule that never puts more than `limit` in
a sliding window also never exceeds a token bucket of capacity `limit` refilled
at limit / window_s, nor a fixed per-minute counter, so burst pacing is safe
for all three. It is not the default: a provider that enforces a per-minute
figure over shorter slices (OpenAI documents this) refuses a burst that even
pacing would have spread out.

When did the provider count a request? Somewhere between our send and its
answer: a burst of hundreds leaves one event loop over a noticeable time, so
the booked time is too early. A booking therefore stays in the window until its
call has ANSWERED, plus the window (and a slack for the provider's clock); a
slot is only booked again once the call holding it has answered. That costs one
call latency per window, and never a 429.

`WindowLog` answers the questions the even pacer's `Bucket` (limiter.py)
answers: when may `units` go, take them, settle real usage, the provider's
window is full until a time."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

# A call reaches the provider before it answers, so a booking counted until its
# answer + the window is safe by itself; the slack only absorbs clock resolution
# and the provider's own rounding.
MIN_SLACK_S = 0.05       # each booking counts this much longer than the window...
SLACK_SHARE = 0.005      # ...or this share of it
IN_FLIGHT_MAX_S = 600.0  # a booking never settled (its process died) frees after this


@dataclass
class _Entry:
    at: float                    # booked send time
    units: float
    ref: int                     # 0: not a call (a debt, a 429's "window full")
    done_at: float | None        # when the call answered (or was given up); None = in flight


@dataclass
class WindowLog:
    """Bookings in booking order; `live` is the sum of their units."""

    limit: float
    window_s: float
    burst_share: float = 1.0   # Bucket's signature; a window log spends the whole limit
    entries: deque = field(default_factory=deque)
    live: float = 0.0
    last_at: float = 0.0
    slack_s: float = field(init=False)
    _in_flight: dict = field(default_factory=dict)   # ref -> its entry, until answered
    # A caller may wake late and still send: the window counts from its answer,
    # never from the booked time, so lateness cannot bunch calls in the window.
    late_share = float("inf")

    def __post_init__(self) -> None:
        self.slack_s = max(MIN_SLACK_S, SLACK_SHARE * self.window_s)

    def _capacity(self, factor: float) -> float:
        # After a 429 the limit we trust shrinks with the limiter's rate factor.
        return max(1.0, self.limit * factor)

    def _leaves_at(self, entry: _Entry, now: float) -> float:
        """When the entry stops counting. In flight: not before a window after now
        (it may reach the provider any moment), so its slot is never booked while
        the call is out; the caller quoted that time asks again and sees the answer."""
        if entry.done_at is None and now - entry.at < IN_FLIGHT_MAX_S:
            return max(now, entry.at) + self.window_s + self.slack_s
        done = entry.done_at if entry.done_at is not None else entry.at + IN_FLIGHT_MAX_S
        return done + self.window_s + self.slack_s

    def _expire(self, now: float) -> None:
        # Oldest first; an older call still out keeps later ones counted (safe side).
        while self.entries and self._leaves_at(self.entries[0], now) <= now:
            gone = self.entries.popleft()
            self.live -= gone.units
            self._in_flight.pop(gone.ref, None)

    def start_at(self, now: float, units: float, factor: float) -> float:
        """Earliest time `units` fit: after every earlier booking (bookings go in
        order), and once enough bookings have left the window. A request bigger
        than the whole limit goes once the window is empty."""
        self._expire(now)
        capacity = self._capacity(factor)
        need = min(units, capacity)
        at = max(now, self.last_at)
        if self.live + need <= capacity:
            return at
        live = self.live
        for leaves, entry_units in sorted((self._leaves_at(e, now), e.units) for e in self.entries):
            live -= entry_units
            at = max(at, leaves)
            if live + need <= capacity:
                break
        return at

    def take(self, at: float, units: float, factor: float, ref: int = 0) -> None:
        self.entries.append(entry := _Entry(at, units, ref, None))
        self._in_flight[ref] = entry
        self.live += units
        self.last_at = max(self.last_at, at)

    def done(self, ref: int, done_at: float) -> None:
        """The call booked as `ref` answered (or failed, or was never sent) at `done_at`."""
        entry = self._in_flight.pop(ref, None)
        if entry is not None:
            entry.done_at = max(done_at, entry.at)

    def adjust(self, units: float, factor: float) -> None:
        # More was used than booked: count the debt from the newest booking, which
        # is no earlier than the call it belongs to. Less was used: keep the booking
        # as it was (under-use is safe; a refund counted in the wrong window is not).
        if units > 0:
            self.entries.append(_Entry(self.last_at, units, 0, self.last_at))
            self.live += units

    def drain_until(self, when: float) -> None:
        # The provider says its window is full until `when` (a 429's Retry-After);
        # bookings already handed out still count on top of that.
        self.entries.appendleft(_Entry(when, self.limit, 0, when - self.window_s - self.slack_s))
        self.live += self.limit
