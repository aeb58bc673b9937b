"""The lineage records of one answer: `calls` and `steps` rows (docs/design.md,
"Result tables"), collected thread-safely while host calls run concurrently.

Every string that reaches a record goes through `redact`, so a credential
that leaks into an error message or a REPL output never reaches a table.
"""
from __future__ import annotations

import os
import re
import threading
import uuid
from dataclasses import asdict, dataclass, field

# `compact`: a root-model call that summarised older turns (engine/compaction.py):
# costed like any call, never one of the model's iterations.
CALL_KINDS = ("root", "sub", "rlm", "compact")
STEP_OUTPUT_CHARS = 4000
REDACTED = "[REDACTED]"

# Names whose values are credentials: redacted wherever they appear as text.
_SECRET_ENV = re.compile(r"^(AWS_.*|.*_API_KEY|.*_SECRET.*|.*_TOKEN)$")
_MIN_SECRET_LEN = 8   # shorter values (e.g. "1") would redact ordinary words


def new_call_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class CallRow:
    query_id: str
    call_id: str
    parent_call_id: str | None
    depth: int
    kind: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    latency_s: float = 0.0
    retries: int = 0
    cache_hit: bool = False
    status: str = "ok"
    cached_tokens: int = 0               # of prompt_tokens, billed as cache reads
    cache_write_tokens: int = 0          # of prompt_tokens, billed as cache writes
    reasoning_tokens: int = 0            # of completion_tokens
    service_tier: str | None = None
    cache_saved_usd: float | None = None  # the same call uncached, minus cost_usd

    def take_billing(self, completion) -> None:
        """The cache, reasoning and tier figures of a gateway Completion."""
        for name in ("cached_tokens", "cache_write_tokens", "reasoning_tokens", "service_tier",
                     "cache_saved_usd"):
            setattr(self, name, getattr(completion, name, getattr(self, name)))


@dataclass
class StepRow:
    query_id: str
    call_id: str
    iteration: int
    code: str
    output: str
    error: str | None
    elapsed_s: float


def secret_values(extra: tuple[str | None, ...] = ()) -> tuple[str, ...]:
    """Credential values this process knows of (env + any configured api keys)."""
    values = [v for k, v in os.environ.items() if _SECRET_ENV.match(k)]
    values += [v for v in extra if v]
    return tuple(sorted({v for v in values if len(v) >= _MIN_SECRET_LEN}, key=len, reverse=True))


def redact(text: str | None, secrets: tuple[str, ...]) -> str | None:
    if not text:
        return text
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... [truncated: {len(text) - limit} more characters]"


@dataclass
class Recorder:
    """Rows of one RLM (and, merged in, of its child RLMs)."""

    query_id: str
    secrets: tuple[str, ...] = ()
    calls: list[CallRow] = field(default_factory=list)
    steps: list[StepRow] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_call(self, row: CallRow) -> CallRow:
        with self._lock:
            self.calls.append(row)
        return row

    def add_step(self, call_id: str, iteration: int, code: str, output: str,
                 error: str | None, elapsed_s: float) -> None:
        row = StepRow(self.query_id, call_id, iteration, redact(code, self.secrets) or "",
                      truncate(redact(output, self.secrets) or "", STEP_OUTPUT_CHARS),
                      redact(error, self.secrets), round(elapsed_s, 6))
        with self._lock:
            self.steps.append(row)

    def merge(self, calls: list[dict], steps: list[dict]) -> None:
        """Adopt a child RLM's rows (already lineage-linked by the child)."""
        with self._lock:
            self.calls.extend(CallRow(**c) for c in calls)
            self.steps.extend(StepRow(**s) for s in steps)

    def call_dicts(self) -> list[dict]:
        with self._lock:
            return [asdict(c) for c in self.calls]

    def step_dicts(self) -> list[dict]:
        with self._lock:
            return [asdict(s) for s in self.steps]


def usage_of(calls: list[dict]) -> dict:
    """Totals over model calls (`rlm` rows aggregate their subtree: not counted twice)."""
    model_calls = [c for c in calls if c["kind"] != "rlm"]
    costs = [c["cost_usd"] for c in model_calls if c["cost_usd"] is not None]
    saved = [c.get("cache_saved_usd") for c in model_calls if c.get("cache_saved_usd") is not None]
    return {
        "llm_calls": len(model_calls),
        "root_calls": sum(c["kind"] == "root" for c in model_calls),
        "sub_calls": sum(c["kind"] == "sub" for c in model_calls),
        "rlm_calls": sum(c["kind"] == "rlm" for c in calls),
        "compact_calls": sum(c["kind"] == "compact" for c in model_calls),
        "input_tokens": sum(c["prompt_tokens"] for c in model_calls),
        "output_tokens": sum(c["completion_tokens"] for c in model_calls),
        "cost_usd": sum(costs) if costs else (None if model_calls else 0.0),
        "cache_hits": sum(bool(c["cache_hit"]) for c in model_calls),
        "cached_tokens": sum(c.get("cached_tokens") or 0 for c in model_calls),
        "cache_write_tokens": sum(c.get("cache_write_tokens") or 0 for c in model_calls),
        "cache_saved_usd": sum(saved) if saved else None,
    }
