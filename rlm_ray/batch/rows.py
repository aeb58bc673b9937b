"""Turn one question's outcome (an engine Result, or a failure the driver
saw) into the rows it contributes to the answers/calls/steps tables."""
from __future__ import annotations

import datetime as dt
from typing import Any

from rlm_ray.batch import scoring
from rlm_ray.batch.queries import Query
from rlm_ray.batch.tables import CALLS, STEPS, FinishedQuestion

# Model-written output can be huge; the trajectory keeps a readable head.
MAX_STEP_TEXT = 20_000


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _truncate(text: Any) -> Any:
    if isinstance(text, str) and len(text) > MAX_STEP_TEXT:
        return text[:MAX_STEP_TEXT] + f"\n... [{len(text) - MAX_STEP_TEXT} chars truncated]"
    return text


def _labelled(answer: dict, query: Query) -> dict:
    """A grid cell's template and scope (what the scope's documents were, when planned)."""
    answer["template_id"] = query.template_id
    answer["scope"] = None if query.scope is None else list(query.scope)
    answer["scope_sha256"] = query.scope_sha256
    return answer


def _scored(answer: dict, query: Query) -> dict:
    answer["expected"] = query.expected
    answer["exact_match"] = scoring.exact_match(answer.get("answer"), query.expected)
    answer["normalized_match"] = scoring.normalized_match(answer.get("answer"), query.expected)
    return answer


def from_result(query: Query, result: Any, started_at: dt.datetime,
                model: str | None, *, attempts: int = 1, host_losses: int = 0) -> FinishedQuestion:
    """Rows for a question the engine finished (with any terminal status)."""
    usage = _get(result, "usage") or {}
    calls = [dict(c, query_id=query.query_id) for c in (_get(result, "calls") or [])]
    steps = [dict(s, query_id=query.query_id, code=_truncate(s.get("code")),
                  output=_truncate(s.get("output")), error=_truncate(s.get("error")))
             for s in (_get(result, "steps") or [])]
    answer_text = _get(result, "answer")
    answer = {
        "query_id": query.query_id,
        "question": query.question,
        "answer": None if answer_text is None else str(answer_text),
        "status": _get(result, "status") or "error",
        "error": _get(result, "error"),
        "iterations": _get(result, "iterations"),
        "max_depth_reached": _get(result, "max_depth_reached"),
        "llm_calls": usage.get("llm_calls", usage.get("calls", len(calls))),
        "input_tokens": usage.get("input_tokens", usage.get("prompt_tokens")),
        "output_tokens": usage.get("output_tokens", usage.get("completion_tokens")),
        "cost_usd": _get(result, "cost_usd"),
        "cached_tokens": usage.get("cached_tokens", 0),
        "cache_write_tokens": usage.get("cache_write_tokens", 0),
        "cache_saved_usd": usage.get("cache_saved_usd"),
        "context_chars": _get(result, "context_chars"),
        "context_sha256": _get(result, "context_sha256"),
        "wall_s": _get(result, "wall_s"),
        "model": _get(result, "model") or model,
        "started_at": started_at,
        "finished_at": utc_now(),
        "attempts": attempts, "host_losses": host_losses,
        "output": _get(result, "output"),   # typed answers only (the writer drops it otherwise)
    }
    # Keep only schema columns so an engine adding fields never breaks a write.
    calls = [{f.name: c.get(f.name) for f in CALLS} for c in calls]
    steps = [{f.name: s.get(f.name) for f in STEPS} for s in steps]
    return FinishedQuestion(_scored(_labelled(answer, query), query), calls, steps)


def dead_letter(query: Query, error: str, started_at: dt.datetime, model: str | None,
                status: str = "error", *, attempts: int = 1,
                host_losses: int = 0) -> FinishedQuestion:
    """The row of a question that kept failing: recorded, never a dead job."""
    finished = utc_now()
    answer = {
        "query_id": query.query_id, "question": query.question, "answer": None,
        "status": status, "error": error, "iterations": 0, "max_depth_reached": 0,
        "llm_calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0,
        "wall_s": (finished - started_at).total_seconds(), "model": model,
        "started_at": started_at, "finished_at": finished,
        "attempts": attempts, "host_losses": host_losses,
    }
    return FinishedQuestion(_scored(_labelled(answer, query), query))
