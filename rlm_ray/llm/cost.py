"""Dollars and context windows from litellm's offline tables, with user overrides.

An unknown price is reported as None, never 0: a 0 would let a dollar budget
run forever on a model nobody priced."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from rlm_ray.llm._litellm import litellm
from rlm_ray.llm.config import GatewayConfig


@dataclass(frozen=True)
class Price:
    input_per_token: float
    output_per_token: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input_per_token + completion_tokens * self.output_per_token


def _bare(model: str) -> str:
    # "openai/gpt-4o-mini" -> "gpt-4o-mini": litellm keys most models both ways.
    return model.split("/", 1)[1] if "/" in model else model


@lru_cache(maxsize=512)
def _litellm_price(model: str) -> Price | None:
    table = litellm().model_cost
    for key in (model, _bare(model)):
        entry = table.get(key)
        if entry and entry.get("input_cost_per_token") is not None:
            return Price(float(entry["input_cost_per_token"]),
                         float(entry.get("output_cost_per_token") or 0.0))
    return None


def price_for(model: str, config: GatewayConfig) -> Price | None:
    """The user's table wins (negotiated prices, self-hosted models), then litellm's."""
    user = (config.prices or {}).get(model) or (config.prices or {}).get(_bare(model))
    if user:
        return Price(user["input_per_1m"] / 1e6, user["output_per_1m"] / 1e6)
    return _litellm_price(model)


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int,
             config: GatewayConfig) -> float | None:
    price = price_for(model, config)
    return None if price is None else price.cost(prompt_tokens, completion_tokens)


@lru_cache(maxsize=512)
def _litellm_context_window(model: str) -> int | None:
    table = litellm().model_cost
    for key in (model, _bare(model)):
        entry = table.get(key) or {}
        window = entry.get("max_input_tokens") or entry.get("max_tokens")
        if window:
            return int(window)
    return None


def context_window(model: str, config: GatewayConfig | None = None) -> int | None:
    """Max input tokens for `model`, None when nobody knows."""
    overrides = (config.context_windows if config else None) or {}
    if model in overrides:
        return int(overrides[model])
    if _bare(model) in overrides:
        return int(overrides[_bare(model)])
    return _litellm_context_window(model)
