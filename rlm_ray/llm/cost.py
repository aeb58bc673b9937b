"""Dollars and context windows from litellm's offline tables, with user overrides.

The bill of a call is litellm's own cost calculation (`litellm.cost_per_token`)
on the provider's usage object: cached reads, cache writes, reasoning tokens,
prices that change above a prompt size and service tiers (flex, priority) are
priced the way litellm prices them. A user price table wins when given; it is
handed to the same calculation as a model-info override, so both paths bill
cached tokens alike.

An unknown price is reported as None, never 0: a 0 would let a dollar budget
run forever on a model nobody priced."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from rlm_ray.llm._litellm import litellm
from rlm_ray.llm.config import GatewayConfig
from rlm_ray.llm.usage import CallUsage


@dataclass(frozen=True)
class Price:
    """Per-token prices of one model (at one service tier). Cached reads and cache
    writes default to the input price when the table has none for them."""

    input_per_token: float
    output_per_token: float
    cached_input_per_token: float | None = None
    cache_write_per_token: float | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
             cache_write_tokens: int = 0) -> float:
        """A closed-form figure for estimates (budget reservations, dry runs)."""
        read = self.input_per_token if self.cached_input_per_token is None else self.cached_input_per_token
        write = self.input_per_token if self.cache_write_per_token is None else self.cache_write_per_token
        fresh = max(prompt_tokens - cached_tokens - cache_write_tokens, 0)
        return (fresh * self.input_per_token + cached_tokens * read + cache_write_tokens * write
                + completion_tokens * self.output_per_token)

    def worst_case(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The most a call of this size can cost: every prompt token at the dearest input rate."""
        dearest = max(self.input_per_token, self.cache_write_per_token or 0.0)
        return prompt_tokens * dearest + completion_tokens * self.output_per_token

    def model_info(self) -> dict:
        info = {"input_cost_per_token": self.input_per_token,
                "output_cost_per_token": self.output_per_token}
        if self.cached_input_per_token is not None:
            info["cache_read_input_token_cost"] = self.cached_input_per_token
        if self.cache_write_per_token is not None:
            info["cache_creation_input_token_cost"] = self.cache_write_per_token
        return info


def _bare(model: str) -> str:
    # "openai/gpt-4o-mini" -> "gpt-4o-mini": litellm keys most models both ways.
    return model.split("/", 1)[1] if "/" in model else model


def _lookup(table: dict | None, model: str):
    table = table or {}
    return table.get(model) or table.get(_bare(model))


def billing_model(model: str, config: GatewayConfig) -> str:
    """The litellm price entry a model is billed as: `price_like` maps a served name
    (a proxy alias, a self-hosted deployment, the simulator) to a known model."""
    return _lookup(config.price_like, model) or model


@lru_cache(maxsize=512)
def _litellm_entry(model: str) -> tuple[str, dict] | None:
    table = litellm().model_cost
    for key in (model, _bare(model)):
        entry = table.get(key)
        if entry and entry.get("input_cost_per_token") is not None:
            return key, entry
    return None


def _tier_rate(entry: dict, base: str, tier: str | None) -> float | None:
    if tier and entry.get(f"{base}_{tier}") is not None:
        return float(entry[f"{base}_{tier}"])
    value = entry.get(base)
    return None if value is None else float(value)


def _user_price(model: str, config: GatewayConfig) -> Price | None:
    user = _lookup(config.prices, model)
    if not user:
        return None
    per_1m = {key: (None if user.get(key) is None else float(user[key]) / 1e6)
              for key in ("input_per_1m", "output_per_1m", "cached_input_per_1m", "cache_write_per_1m")}
    return Price(per_1m["input_per_1m"], per_1m["output_per_1m"],
                 per_1m["cached_input_per_1m"], per_1m["cache_write_per_1m"])


def price_for(model: str, config: GatewayConfig, service_tier: str | None = None) -> Price | None:
    """The user's table wins (negotiated prices, self-hosted models), then litellm's
    (at `service_tier` when litellm has a price for that tier)."""
    user = _user_price(model, config)
    if user is not None:
        return user
    found = _litellm_entry(billing_model(model, config))
    if found is None:
        return None
    entry = found[1]
    return Price(_tier_rate(entry, "input_cost_per_token", service_tier),
                 _tier_rate(entry, "output_cost_per_token", service_tier) or 0.0,
                 _tier_rate(entry, "cache_read_input_token_cost", service_tier),
                 _tier_rate(entry, "cache_creation_input_token_cost", service_tier))


def billed_cost(model: str, usage: CallUsage, config: GatewayConfig) -> float | None:
    """What the provider bills for one answered call, by litellm's cost calculation."""
    lib = litellm()
    usage_object = usage.litellm_usage()
    common = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
              "usage_object": usage_object, "service_tier": usage.service_tier}
    user = _user_price(model, config)
    if user is not None:
        # The same calculation as litellm's table, on the user's prices.
        provider = lib.get_llm_provider(model)[1] if "/" in model else "openai"
        prompt_usd, completion_usd = lib.cost_per_token(
            model=model, custom_llm_provider=provider,
            requested_model_info_override=user.model_info(), **common)
        return prompt_usd + completion_usd
    found = _litellm_entry(billing_model(model, config))
    if found is None:
        return None
    prompt_usd, completion_usd = lib.cost_per_token(model=found[0], **common)
    return prompt_usd + completion_usd


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int,
             config: GatewayConfig) -> float | None:
    price = price_for(model, config, config.service_tier)
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


def provider_family(model: str, config: GatewayConfig) -> str:
    """'anthropic' when the billed model caches only at explicit breakpoints
    (Claude, wherever it is served), else 'automatic' (OpenAI, Gemini, DeepSeek, ...)."""
    billed = billing_model(model, config).lower()
    return "anthropic" if "claude" in billed or billed.startswith("anthropic/") else "automatic"
