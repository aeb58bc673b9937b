"""What the simulator saw: the numbers tests use to prove client behaviour
(nothing paid twice, concurrency reached, no rate window exceeded)."""
from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from rlm_ray.sim.limits import SlidingWindow

LABEL = "rlm-ray provider SIMULATOR (not a real model provider)"


def prompt_key(model: str, messages: list[dict]) -> bytes:
    """Identity of a prompt: the same model and messages are the same paid call."""
    raw = json.dumps([model, messages], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(raw.encode()).digest()


@dataclass
class SimStats:
    """Counters shared by the server's event loop and callers in other threads."""

    window_s: float = 60.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.completions = 0
            self.by_status: Counter[int] = Counter()
            self.faults: Counter[str] = Counter()
            self.models: Counter[str] = Counter()
            self.prompt_tokens = 0
            self.completion_tokens = 0
            self.cached_tokens = 0
            self.cache_write_tokens = 0
            self.service_tiers: Counter[str] = Counter()
            self.in_flight = 0
            self.max_concurrency = 0
            self.repeated_prompts = 0
            self._answered: set[bytes] = set()
            self.observed = SlidingWindow(self.window_s)
            self.started_at = time.time()

    def request_started(self) -> None:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_concurrency = max(self.max_concurrency, self.in_flight)

    def model_requested(self, model: str) -> None:
        with self._lock:
            self.models[model] += 1

    def request_finished(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def status(self, code: int) -> None:
        with self._lock:
            self.by_status[code] += 1

    def fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def admitted(self, now: float, tokens: int) -> None:
        with self._lock:
            self.observed.record(now, tokens)

    def completed(self, key: bytes, prompt_tokens: int, completion_tokens: int,
                  cached_tokens: int = 0, cache_write_tokens: int = 0,
                  service_tier: str | None = None) -> None:
        """A full, well-formed answer was delivered: this is what a provider bills."""
        with self._lock:
            self.completions += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.cached_tokens += cached_tokens
            self.cache_write_tokens += cache_write_tokens
            self.service_tiers[service_tier or "none"] += 1
            if key in self._answered:
                self.repeated_prompts += 1
            else:
                self._answered.add(key)

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "simulator": LABEL,
                "requests": self.requests,
                "completions": self.completions,
                "by_status": dict(sorted(self.by_status.items())),
                "faults": dict(sorted(self.faults.items())),
                "models": dict(sorted(self.models.items())),
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "cached_tokens": self.cached_tokens,
                "cache_write_tokens": self.cache_write_tokens,
                "service_tiers": dict(sorted(self.service_tiers.items())),
                "in_flight": self.in_flight,
                "max_concurrency": self.max_concurrency,
                "distinct_prompts": len(self._answered),
                "repeated_prompts": self.repeated_prompts,
                "windows": {
                    "window_s": self.observed.window_s,
                    "max_requests": self.observed.max_requests,
                    "max_tokens": self.observed.max_tokens,
                },
                "started_at": self.started_at,
            }


def normalize(snapshot: dict) -> dict:
    """A /stats JSON body back into the in-process shape (JSON made the status keys strings)."""
    out = dict(snapshot)
    out["by_status"] = {int(code): n for code, n in snapshot.get("by_status", {}).items()}
    return out
