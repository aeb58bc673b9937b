"""GatewayConfig: everything that shapes how the gateway calls one provider."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from rlm_ray.errors import UserError

CacheMode = Literal["auto", "always", "off"]
CACHE_MODES = ("auto", "always", "off")
PROMPT_CACHE_MODES = ("auto", "off")
SERVICE_TIERS = ("auto", "default", "flex", "priority")
# How the limiter spends rpm/tpm (limiter.py): "even" spreads them over the window
# (safe whatever the provider counts over); "burst" spends a sliding window's
# whole allowance at once, then paces (for token-bucket / sliding-window limits).
PACING_MODES = ("even", "burst")
_PRICE_KEYS = ("input_per_1m", "output_per_1m", "cached_input_per_1m", "cache_write_per_1m")


@dataclass(frozen=True)
class GatewayConfig:
    rpm: float | None = None            # requests per window_s, cluster-wide, per model key
    tpm: float | None = None            # tokens (prompt + completion) per window_s
    cache_uri: str | None = None        # local dir or s3:// prefix; None = no response cache
    cache_mode: CacheMode = "auto"      # auto: only deterministic calls (temperature 0 or seed)
    # {model: {"input_per_1m": x, "output_per_1m": y[, "cached_input_per_1m": r,
    #  "cache_write_per_1m": w]}}: wins over litellm's table
    prices: dict | None = None
    price_like: dict | None = None      # {served model: litellm model it is billed as}
    prompt_cache: str = "auto"          # root loops: cache marks / keys (auto) or none (off)
    service_tier: str | None = None     # sent with every call (e.g. "flex"); priced by litellm
    max_retries: int = 8
    backoff_s: float = 0.5              # first retry waits up to this (full jitter), doubling
    timeout_s: float = 120.0            # per attempt: a hung connection becomes a retryable Timeout
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)   # never logged, cached or recorded
    window_s: float = 60.0              # the provider's accounting window ("per minute" = 60)
    context_windows: dict | None = None  # {model: max input tokens} overrides litellm's table
    shared_limiter: bool | None = None  # None: the Ray limiter actor when Ray is up, else in-process
    gateway_actors: int = 2             # async actors per node that complete_many spreads over
    pacing: str = "even"                # how rpm/tpm are spent: even | burst (PACING_MODES)
    model_pacing: dict | None = None    # {model: pacing} for models paced unlike `pacing`
    # A Budget every call made with this config also draws from (a batch's --budget-usd):
    # reserved at the worst case, settled at the billed figure, shared cluster-wide.
    spend_cap: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.cache_mode not in CACHE_MODES:
            raise UserError(f"cache_mode must be one of {', '.join(CACHE_MODES)}, got {self.cache_mode!r}")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"{name} must be a positive number, got {value!r}")
        if self.window_s <= 0:
            raise UserError(f"window_s must be positive, got {self.window_s!r}")
        if self.backoff_s < 0:
            raise UserError(f"backoff_s must be >= 0, got {self.backoff_s!r}")
        if self.max_retries < 0:
            raise UserError(f"max_retries must be >= 0, got {self.max_retries!r}")
        for model, price in (self.prices or {}).items():
            if not isinstance(price, dict) or {"input_per_1m", "output_per_1m"} - price.keys():
                raise UserError(f"price for {model!r} needs input_per_1m and output_per_1m (USD per 1M tokens)")
            for key, value in price.items():
                if key not in _PRICE_KEYS or not isinstance(value, (int, float)) or value < 0:
                    raise UserError(f"price for {model!r}: {key} must be one of {', '.join(_PRICE_KEYS)} "
                                    f"with a number >= 0 (USD per 1M tokens), got {value!r}")
        for model, mode in [("", self.pacing), *(self.model_pacing or {}).items()]:
            if mode not in PACING_MODES:
                where = f" for {model!r}" if model else ""
                raise UserError(f"pacing{where} must be one of {', '.join(PACING_MODES)}, got {mode!r}")
        if self.prompt_cache not in PROMPT_CACHE_MODES:
            raise UserError(f"prompt_cache must be auto or off, got {self.prompt_cache!r}")
        if self.service_tier is not None and self.service_tier not in SERVICE_TIERS:
            raise UserError(f"service_tier must be one of {', '.join(SERVICE_TIERS)}, "
                            f"got {self.service_tier!r}")

    def with_(self, **changes) -> "GatewayConfig":
        return replace(self, **changes)

    def pacing_for(self, model: str) -> str:
        table = self.model_pacing or {}
        bare = model.split("/", 1)[1] if "/" in model else model
        return table.get(model) or table.get(bare) or self.pacing

    def limiter_key(self, model: str) -> str:
        """Limits belong to a (model, endpoint) pair: the same model name behind two
        different api_bases is two different quotas."""
        return _limiter_key(model, self.api_base) if self.api_base else model


@functools.lru_cache(maxsize=1024)   # asked once per model call: parse each endpoint once
def _limiter_key(model: str, api_base: str) -> str:
    # The key names a Ray actor: never let URL credentials (user:pass@host) into it.
    parts = urlsplit(api_base)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{model}@{urlunsplit((parts.scheme, netloc, parts.path, '', ''))}"


DEFAULT_CONFIG = GatewayConfig()
