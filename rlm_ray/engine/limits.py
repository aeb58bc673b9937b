"""Budgets of a whole RLM tree: what is per RLM (iterations), what is shared by
every RLM of the tree (sub-calls, tokens, dollars, the wall-time deadline),
and the depth rule.

Shared limits travel as values that any actor can draw from: `rlm_ray.llm.Budget`
(tokens, dollars: charged by the gateway on every model call) and a second
Budget counting only sub-calls (root turns are not sub-calls), plus an absolute
deadline in epoch seconds, so a child RLM simply inherits what its parent has
left.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from rlm_ray.errors import UserError
from rlm_ray.llm.budget import Budget
from rlm_ray.llm.types import BudgetExceeded

DEFAULT_SUB_CONTEXT_TOKENS = 128_000   # sub-model window when litellm does not know it


@dataclass(frozen=True)
class Limits:
    max_depth: int = 1
    max_iterations: int = 20
    max_sub_calls: int | None = None
    budget_usd: float | None = None
    budget_tokens: int | None = None
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        checks = {
            "max_depth": (self.max_depth, 1), "max_iterations": (self.max_iterations, 1),
            "max_sub_calls": (self.max_sub_calls, 0), "budget_usd": (self.budget_usd, 0),
            "budget_tokens": (self.budget_tokens, 1), "timeout_s": (self.timeout_s, 0),
        }
        for name, (value, minimum) in checks.items():
            if value is not None and value < minimum:
                raise UserError(f"{name} must be >= {minimum}, got {value!r}")
        if self.timeout_s == 0:
            raise UserError("timeout_s must be positive")


@dataclass
class TreeBudget:
    """The part of the limits that every RLM of one tree draws from."""

    model_budget: Budget            # tokens + dollars, charged by the gateway
    sub_calls: Budget               # counts sub-calls only
    deadline: float | None          # epoch seconds (time.time), shared across processes
    max_depth: int
    max_iterations: int

    @classmethod
    def open(cls, limits: Limits, started: float | None = None) -> "TreeBudget":
        started = time.time() if started is None else started
        return cls(
            model_budget=Budget(usd=limits.budget_usd, tokens=limits.budget_tokens),
            sub_calls=Budget(calls=limits.max_sub_calls),
            deadline=None if limits.timeout_s is None else started + limits.timeout_s,
            max_depth=limits.max_depth,
            max_iterations=limits.max_iterations,
        )

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.time()

    def expired(self) -> bool:
        left = self.remaining_s()
        return left is not None and left <= 0

    def can_spawn_child(self, depth: int) -> bool:
        """A child's root turns run at depth+1 and its sub-calls at depth+2:
        both must stay within max_depth, else rlm_query falls back to llm_query."""
        return depth + 2 <= self.max_depth

    @property
    def gateway_budget(self) -> Budget | None:
        """What the gateway should charge: None when tokens and dollars are unlimited
        (saves two budget-bank round trips per call; the records still count usage)."""
        limits = self.model_budget.limits
        return None if limits["usd"] is None and limits["tokens"] is None else self.model_budget

    def take_sub_calls(self, wanted: int) -> int:
        """Reserve up to `wanted` sub-calls; returns how many were granted (maybe 0)."""
        if wanted <= 0:
            return 0
        if self.sub_calls.limits["calls"] is None:   # unlimited: no bank round trip
            return wanted
        try:
            self.sub_calls.reserve(usd=None, tokens=0, calls=wanted)
            return wanted
        except BudgetExceeded as exc:
            left = int(exc.limit - exc.used)
        if left <= 0:
            return 0
        try:   # a concurrent child may have taken some meanwhile: one retry, then give up
            self.sub_calls.reserve(usd=None, tokens=0, calls=left)
            return left
        except BudgetExceeded:
            return 0

    def close(self) -> None:
        self.model_budget.close()
        self.sub_calls.close()


@dataclass
class StopSignal:
    """Set by host functions (which run inside the sandbox's call) when the tree's
    budget is gone: the model's code may catch the exception, the loop must not."""

    reason: str | None = None        # "budget_exceeded" | "timeout"
    detail: str = ""
    flagged_at: float = field(default=0.0)

    def flag(self, reason: str, detail: str) -> None:
        if self.reason is None:
            self.reason, self.detail, self.flagged_at = reason, detail, time.time()
