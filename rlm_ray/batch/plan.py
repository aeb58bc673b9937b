"""`--dry-run`: what a batch would do and roughly what it would cost, without
calling any model. The estimate is deliberately simple (questions x calls
per question x typical tokens per call x price): its job is to catch a
10x mistake before it is paid for, not to predict cents."""
from __future__ import annotations

from rlm_ray.batch.queries import Query

# Typical per-call sizes of an RLM: root turns carry metadata + truncated REPL
# views (a few thousand tokens); replies are code blocks (a few hundred).
INPUT_TOKENS_PER_CALL = 4000
OUTPUT_TOKENS_PER_CALL = 400


def _price(model: str, gateway) -> tuple[float, float] | None:
    from rlm_ray.llm.config import GatewayConfig
    from rlm_ray.llm.cost import price_for

    price = price_for(model, gateway or GatewayConfig())
    return None if price is None else (price.input_per_token, price.output_per_token)


def estimate(todo: list[Query], rlm: dict, *, calls_per_question: int, total: int,
             concurrency: int) -> dict:
    model = rlm.get("model") or "?"
    calls = len(todo) * calls_per_question
    tokens_in, tokens_out = calls * INPUT_TOKENS_PER_CALL, calls * OUTPUT_TOKENS_PER_CALL
    price = _price(model, rlm.get("gateway"))
    cost = None if price is None else tokens_in * price[0] + tokens_out * price[1]
    return {
        "questions_total": total,
        "questions_to_run": len(todo),
        "already_finished": total - len(todo),
        "model": model,
        "sub_model": rlm.get("sub_model") or model,
        "concurrency": concurrency,
        "calls_per_question": calls_per_question,
        "expected_calls": calls,
        "expected_input_tokens": tokens_in,
        "expected_output_tokens": tokens_out,
        # Priced at the root model's rate: sub-models are usually cheaper, so an upper bound.
        "estimated_cost_usd": "unknown" if cost is None else round(cost, 4),
    }


def format_plan(plan: dict) -> str:
    width = max(len(k) for k in plan)
    lines = ["rlm-ray batch plan (dry run: no model called)"]
    lines += [f"  {key.ljust(width)}  {value}" for key, value in plan.items()]
    return "\n".join(lines)
