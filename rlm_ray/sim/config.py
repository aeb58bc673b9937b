"""The simulator's knobs, validated once (bad values are user errors)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from rlm_ray.errors import UserError

FAULT_KINDS = ("500", "503", "hang", "malformed", "truncated")


@dataclass(frozen=True)
class SimConfig:
    latency_ms: float = 0.0          # base latency of every answered request
    per_token_ms: float = 0.0        # + this per completion token
    jitter: float = 0.0              # latency x uniform(1 - jitter, 1 + jitter)
    rpm: float | None = None         # requests per sliding window (None = unlimited)
    tpm: float | None = None         # tokens (prompt + max_tokens or completion) per window
    window_s: float = 60.0           # the sliding window; shorter in tests
    fail_rate: float = 0.0           # probability an admitted request gets a fault
    faults: tuple[str, ...] = FAULT_KINDS
    fail_first_n: int = 0            # the first N admitted requests fault, cycling `faults`
    hang_s: float = 30.0             # how long a "hang" holds the connection
    context_window: int = 128_000    # prompt + max_tokens above this -> 400
    # served model -> its own window (wins over context_window): one server can stand in
    # for a 32k model and a 128k one at once
    model_windows: tuple[tuple[str, int], ...] = ()
    seed: int = 0
    # served model -> the price entry it bills like ("gpt-5-mini": automatic prefix
    # caching; "claude-...": breakpoint caching); see sim/caching.py. Unlisted: no caching.
    bill_like: tuple[tuple[str, str], ...] = ()
    cache_replicas: int = 4          # cache routing: requests without prompt_cache_key spread here

    def __post_init__(self) -> None:
        object.__setattr__(self, "faults", tuple(str(f) for f in self.faults))
        pairs = self.bill_like.items() if isinstance(self.bill_like, dict) else self.bill_like
        object.__setattr__(self, "bill_like", tuple((str(k), str(v)) for k, v in pairs))
        windows = (self.model_windows.items() if isinstance(self.model_windows, dict)
                   else self.model_windows)
        object.__setattr__(self, "model_windows", tuple((str(k), v) for k, v in windows))
        for model, window in self.model_windows:
            if isinstance(window, bool) or not isinstance(window, int) or window < 1:
                raise UserError(f"simulator window for {model!r} must be a token count >= 1, "
                                f"got {window!r}")
        if self.cache_replicas < 1:
            raise UserError(f"simulator cache_replicas must be >= 1, got {self.cache_replicas}")
        unknown = sorted(set(self.faults) - set(FAULT_KINDS))
        if unknown:
            raise UserError(f"unknown simulator fault kind(s) {', '.join(unknown)} "
                            f"(known: {', '.join(FAULT_KINDS)})")
        if (self.fail_rate > 0 or self.fail_first_n > 0) and not self.faults:
            raise UserError("simulator faults requested but no fault kinds enabled")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise UserError(f"--fail-rate must be between 0 and 1, got {self.fail_rate}")
        if not 0.0 <= self.jitter <= 1.0:
            raise UserError(f"--jitter must be between 0 and 1, got {self.jitter}")
        for name in ("latency_ms", "per_token_ms", "hang_s", "fail_first_n"):
            value = getattr(self, name)
            if value < 0 or not math.isfinite(value):
                raise UserError(f"simulator {name} must be a finite number >= 0, got {value}")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and not value >= 1:
                raise UserError(f"--{name} must be at least 1, got {value}")
        if not self.window_s > 0:
            raise UserError(f"simulator window_s must be > 0, got {self.window_s}")
        if self.context_window < 1:
            raise UserError(f"simulator context_window must be >= 1, got {self.context_window}")

    def window_for(self, model: str) -> int:
        """The input window the simulator enforces for `model`."""
        return dict(self.model_windows).get(model, self.context_window)

    def billed_like(self, model: str) -> str | None:
        return dict(self.bill_like).get(model)
