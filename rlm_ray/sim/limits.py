"""Sliding-window request/token accounting: enforcement (RPM/TPM) and the
"worst window seen" figures that let tests prove a client stayed under a limit.

Only admitted requests count, as with real providers: a 429 costs no quota.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class SlidingWindow:
    window_s: float = 60.0
    _events: deque[tuple[float, int]] = field(default_factory=deque)
    _tokens: int = 0
    max_requests: int = 0
    max_tokens: int = 0

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.window_s:
            self._tokens -= self._events.popleft()[1]

    def record(self, now: float, tokens: int) -> None:
        self._expire(now)
        self._events.append((now, tokens))
        self._tokens += tokens
        # The busiest window always ends at an admission, so checking here is exact.
        self.max_requests = max(self.max_requests, len(self._events))
        self.max_tokens = max(self.max_tokens, self._tokens)

    def wait_for_room(self, now: float, tokens: int, rpm: float | None,
                      tpm: float | None) -> float:
        """Seconds until a request of `tokens` fits under both limits (0 = now)."""
        self._expire(now)
        wait = 0.0
        if rpm is not None and len(self._events) + 1 > rpm:
            # The request fits once enough of the oldest admissions have expired.
            must_expire = len(self._events) + 1 - int(rpm)
            wait = self._events[must_expire - 1][0] + self.window_s - now
        if tpm is not None and self._tokens + tokens > tpm:
            if tokens > tpm:
                return self.window_s  # can never fit; tell the client to back off hard
            excess, freed = self._tokens + tokens - tpm, 0
            for t, n in self._events:
                freed += n
                if freed >= excess:
                    wait = max(wait, t + self.window_s - now)
                    break
        return max(wait, 0.0)

    def reset(self) -> None:
        self._events.clear()
        self._tokens = 0
        self.max_requests = self.max_tokens = 0
