"""The model gateway: litellm calls behind a cluster-wide RPM/TPM limiter,
Retry-After-aware retries, cost accounting, a content-addressed response cache
and hard budgets. litellm itself loads lazily on the first call."""
from rlm_ray.llm.budget import Budget
from rlm_ray.llm.config import GatewayConfig
from rlm_ray.llm.types import BudgetExceeded, Completion, LLMError

__all__ = ["Budget", "BudgetExceeded", "Completion", "GatewayConfig", "LLMError",
           "acomplete", "acomplete_many", "complete", "complete_many", "context_window"]

_LAZY = {
    "complete": "rlm_ray.llm.gateway", "acomplete": "rlm_ray.llm.gateway",
    "complete_many": "rlm_ray.llm.fanout", "acomplete_many": "rlm_ray.llm.fanout",
    "context_window": "rlm_ray.llm.cost",
}


def __getattr__(name: str):
    # The call path pulls in litellm (~2-3 s): only pay for it when it is used.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rlm_ray.llm' has no attribute {name!r}")
