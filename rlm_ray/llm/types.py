"""The gateway's value types and errors (no heavy imports: every area may use them)."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Completion:
    """One model answer plus what it cost. `cost_usd` is None when the price is
    unknown (never 0: a zero would silently defeat dollar budgets)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    latency_s: float
    retries: int
    cache_hit: bool
    model: str
    cached_tokens: int = 0            # input tokens billed as cache reads
    cache_write_tokens: int = 0       # input tokens billed as cache writes (breakpoint caching)
    reasoning_tokens: int = 0         # part of completion_tokens (billed as output)
    service_tier: str | None = None   # the tier the provider served
    cache_saved_usd: float | None = None  # the same usage without caching, minus cost_usd

    def to_dict(self) -> dict:
        return asdict(self)


class LLMError(Exception):
    """A call that failed for good: not retryable, or out of retries. The message
    names the model and the provider's reason and never carries credentials."""

    def __init__(self, message: str, *, model: str = "", kind: str = "error",
                 retries: int = 0, retryable: bool = False) -> None:
        super().__init__(message)
        self.model = model
        self.kind = kind
        self.retries = retries
        self.retryable = retryable

    def __reduce__(self):  # keyword-only fields must survive pickling through Ray
        return (_rebuild_llm_error, (str(self), self.model, self.kind, self.retries, self.retryable))


def _rebuild_llm_error(message: str, model: str, kind: str, retries: int, retryable: bool) -> LLMError:
    return LLMError(message, model=model, kind=kind, retries=retries, retryable=retryable)


class BudgetExceeded(Exception):
    """A reservation would take a Budget over one of its limits. The engine turns
    it into a partial answer with status `budget_exceeded`."""

    def __init__(self, kind: str, limit: float, used: float, requested: float) -> None:
        super().__init__(
            f"budget exceeded ({kind}): limit {limit:g}, already used/reserved {used:g}, "
            f"this call needs {requested:g}")
        self.kind = kind
        self.limit = limit
        self.used = used
        self.requested = requested

    def __reduce__(self):
        return (BudgetExceeded, (self.kind, self.limit, self.used, self.requested))
