"""`--dry-run`: what a batch would do and roughly what it would cost, without
calling any model. The estimate is deliberately simple (questions x calls
per question x typical tokens per call x price): its job is to catch a
10x mistake before it is paid for, not to predict cents. It does price what
the provider will really bill: the service tier's rates, and with
`--prompt-cache auto` the root turns' growing history read back from the
cache (and, for breakpoint-caching models, written to it). After a real run
the summary prints this same estimate next to the billed figure."""
from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass

# Typical per-call sizes of an RLM: sub-calls carry a chunk (a few thousand
# tokens); replies are code blocks or short answers (a few hundred).
INPUT_TOKENS_PER_CALL = 4000
OUTPUT_TOKENS_PER_CALL = 400
# Root turns: the first carries the system prompt, the question and the
# metadata; every later one adds the previous reply and a truncated REPL view.
ROOT_TURNS_PER_QUESTION = 4
FIRST_ROOT_TOKENS = 1500
ROOT_GROWTH_PER_TURN = 1500
MIN_CACHED_PREFIX = 1024   # providers cache nothing shorter


@dataclass(frozen=True)
class CallMix:
    """Tokens of one question, split the way providers bill them."""

    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cache_write_tokens: int


def question_mix(calls_per_question: int, prompt_cache: str, family: str) -> CallMix:
    roots = min(ROOT_TURNS_PER_QUESTION, calls_per_question)
    subs = calls_per_question - roots
    inputs = [FIRST_ROOT_TOKENS + k * ROOT_GROWTH_PER_TURN for k in range(roots)]
    cached = written = 0
    if prompt_cache == "auto":
        # Turn k reads turn k-1's whole prompt back; breakpoint models first write it.
        cached = sum(prev for prev in inputs[:-1] if prev >= MIN_CACHED_PREFIX)
        if family == "anthropic":
            written = sum(cur - (prev if prev >= MIN_CACHED_PREFIX else 0)
                          for prev, cur in zip([0] + inputs[:-1], inputs))
    return CallMix(sum(inputs) + subs * INPUT_TOKENS_PER_CALL,
                   calls_per_question * OUTPUT_TOKENS_PER_CALL, cached, written)


def estimate(todo: Sized, rlm: dict, *, calls_per_question: int, total: int,
             concurrency: int) -> dict:
    from rlm_ray.llm.config import GatewayConfig
    from rlm_ray.llm.cost import price_for, provider_family

    model = rlm.get("model") or "?"
    gateway = rlm.get("gateway") or GatewayConfig()
    mix = question_mix(calls_per_question, gateway.prompt_cache, provider_family(model, gateway))
    n = len(todo)   # the rows still to run (a list, or a count as a range for grids)
    price = price_for(model, gateway, gateway.service_tier)
    cost = None if price is None else n * price.cost(
        mix.input_tokens, mix.output_tokens, mix.cached_tokens, mix.cache_write_tokens)
    return {
        "questions_total": total,
        "questions_to_run": n,
        "already_finished": total - n,
        "model": model,
        "sub_model": rlm.get("sub_model") or model,
        "concurrency": concurrency,
        "calls_per_question": calls_per_question,
        "expected_calls": n * calls_per_question,
        "expected_input_tokens": n * mix.input_tokens,
        "expected_output_tokens": n * mix.output_tokens,
        "prompt_cache": gateway.prompt_cache,
        "expected_cached_share": round(mix.cached_tokens / mix.input_tokens, 3) if mix.input_tokens else 0,
        "service_tier": gateway.service_tier or "default",
        # Priced at the root model's rate: sub-models are usually cheaper, so an upper bound.
        "estimated_cost_usd": "unknown" if cost is None else round(cost, 4),
    }


def format_plan(plan: dict) -> str:
    width = max(len(k) for k in plan)
    lines = ["rlm-ray batch plan (dry run: no model called)"]
    lines += [f"  {key.ljust(width)}  {value}" for key, value in plan.items()]
    return "\n".join(lines)
