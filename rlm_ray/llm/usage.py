"""`CallUsage`: what a provider says one call consumed, read from the response's
usage object in every family's fields, so it can be billed and recorded.

Conventions (litellm's normalised usage): `prompt_tokens` counts ALL input
tokens, cached reads and cache writes included; `cached_tokens` comes from
`prompt_tokens_details.cached_tokens` (automatic prefix caching) or
`cache_read_input_tokens` (Anthropic-style breakpoints); `cache_write_tokens`
from `cache_creation_input_tokens`; reasoning tokens are part of
`completion_tokens` and billed as output."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

Fallback = int | Callable[[], int]   # a count, or how to make one (tokenising costs CPU)


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _value(fallback: Fallback) -> int:
    return fallback() if callable(fallback) else fallback


def _count(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and value > 0 else 0


@dataclass(frozen=True)
class CallUsage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    service_tier: str | None = None   # the tier the provider says it served

    @classmethod
    def from_response(cls, usage: Any, *, prompt_fallback: Fallback, completion_fallback: Fallback,
                      service_tier: str | None) -> "CallUsage":
        details = _get(usage, "prompt_tokens_details")
        cached = _count(_get(usage, "cache_read_input_tokens")) or _count(_get(details, "cached_tokens"))
        written = (_count(_get(usage, "cache_creation_input_tokens"))
                   or _count(_get(details, "cache_write_tokens"))
                   or _count(_get(details, "cache_creation_tokens")))
        reasoning = _count(_get(_get(usage, "completion_tokens_details"), "reasoning_tokens"))
        prompt = _count(_get(usage, "prompt_tokens")) or _value(prompt_fallback)
        completion = _get(usage, "completion_tokens")
        completion = _count(completion) if completion is not None else _value(completion_fallback)
        return cls(prompt, completion, min(cached, prompt), min(written, prompt),
                   min(reasoning, completion), service_tier)

    def litellm_usage(self):
        """A litellm `Usage` carrying the same figures, for `litellm.cost_per_token`."""
        from rlm_ray.llm._litellm import litellm

        extra: dict = {}
        if self.cache_write_tokens:
            extra = {"cache_creation_input_tokens": self.cache_write_tokens,
                     "cache_read_input_tokens": self.cached_tokens}
        elif self.cached_tokens:
            extra = {"prompt_tokens_details": {"cached_tokens": self.cached_tokens}}
        if self.reasoning_tokens:
            extra["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return litellm().Usage(prompt_tokens=self.prompt_tokens,
                               completion_tokens=self.completion_tokens,
                               total_tokens=self.prompt_tokens + self.completion_tokens, **extra)
