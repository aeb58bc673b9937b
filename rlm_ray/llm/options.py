"""The cost levers (and the limiter's pacing) as CLI flags and pipeline-spec
keys, turned into GatewayConfig fields in one place (`query`, `run` and
scheduled pipelines share them)."""
from __future__ import annotations

import argparse
from typing import Any

from rlm_ray.errors import UserError
from rlm_ray.llm.config import PACING_MODES, PROMPT_CACHE_MODES, SERVICE_TIERS

SPEC_KEYS = ("prompt_cache", "service_tier", "price_like", "pacing")


def add_cost_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt-cache", choices=PROMPT_CACHE_MODES, default="auto",
                        help="auto (default): cache breakpoints on the root loop's prompts for "
                             "providers that need them (Claude), a stable prompt_cache_key for "
                             "automatic prefix caching (OpenAI); off: neither")
    parser.add_argument("--service-tier", choices=SERVICE_TIERS, default=None,
                        help="provider service tier for every call (e.g. flex: OpenAI's "
                             "half-price tier for work that can wait); priced from litellm")
    parser.add_argument("--price-like", action="append", default=None, metavar="[MODEL=]ENTRY",
                        help="bill MODEL (default: --model) like litellm's price entry ENTRY, "
                             "e.g. a proxy alias or self-hosted deployment; repeatable")
    parser.add_argument("--pacing", action="append", default=None, metavar="[MODEL=]MODE",
                        help="how --rpm/--tpm are spent: even (default) spreads them over the "
                             "window, safe whatever the provider counts over; burst spends a "
                             "whole window at once, then paces (token-bucket or sliding-window "
                             "limits, as Anthropic's). MODEL= sets it for one model; repeatable")


def parse_price_like(items: list[str] | str | dict | None, default_model: str | None) -> dict | None:
    if not items:
        return None
    if isinstance(items, dict):
        return {str(k): str(v) for k, v in items.items()}
    out: dict[str, str] = {}
    for item in [items] if isinstance(items, str) else items:
        model, sep, entry = item.rpartition("=")
        model = model if sep else default_model
        if not model or not entry:
            raise UserError(f"--price-like takes [MODEL=]ENTRY, got {item!r}")
        out[model] = entry
    return out


def parse_pacing(items: list[str] | str | dict | None) -> dict:
    """{"pacing": MODE, "model_pacing": {model: MODE} or None} from `--pacing`
    values (MODE or MODEL=MODE) or a spec's `pacing:` (a mode or a mapping)."""
    if not items:
        return {"pacing": "even", "model_pacing": None}
    pairs = (list(items.items()) if isinstance(items, dict)
             else [item.rpartition("=")[::2] for item in ([items] if isinstance(items, str) else items)])
    default, per_model = "even", {}
    for model, mode in pairs:
        if mode not in PACING_MODES:
            raise UserError(f"pacing must be one of {', '.join(PACING_MODES)}, got {mode!r}")
        if model:
            per_model[str(model)] = mode
        else:
            default = mode
    return {"pacing": default, "model_pacing": per_model or None}


def cost_fields(source: Any, model: str | None) -> dict:
    """GatewayConfig keyword arguments from parsed args or a spec mapping."""
    get = source.get if isinstance(source, dict) else (lambda k, d=None: getattr(source, k, d))
    fields = {"prompt_cache": get("prompt_cache") or "auto",
              "service_tier": get("service_tier"),
              "price_like": parse_price_like(get("price_like"), model),
              **parse_pacing(get("pacing"))}
    return fields


def entry_for(items: list[str] | str | dict | None, model: str) -> str | None:
    """The price entry `--price-like` gives `model` as typed (or with no MODEL=):
    an in-process SIMULATOR bills prompt caching like it."""
    return (parse_price_like(items, model) or {}).get(model)
