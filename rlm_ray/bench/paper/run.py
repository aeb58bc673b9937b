"""`rlm-ray bench paper`: load -> (dry run | method) -> score -> table.

Scores are each benchmark's own rule (scoring.py); BrowseComp-Plus is graded
by `--judge-model` when given, else by the labelled contains-match fallback.
Everything a run writes lives under `--out`: the batch folders (runs/), the
per-query scores and the table, so rerunning the same command resumes.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rlm_ray.bench.paper import scoring
from rlm_ray.bench.paper.methods import METHODS, Answered, MethodRun, base_prompt, base_window
from rlm_ray.bench.paper.registry import Dataset
from rlm_ray.bench.paper.tasks import Task

# Calls per question an RLM makes, for the dry-run estimate (the paper's runs
# vary widely; its median is a handful of root turns plus a few sub-calls).
RLM_CALLS_PER_QUESTION = {"rlm": 10, "rlm-no-sub": 6}
BASE_OUTPUT_TOKENS = 1000


@dataclass
class Summary:
    dataset: str
    method: str
    model: str
    questions: int
    score: float                  # mean, in percent (as Table 1)
    cost_mean: float | None       # $/query; None when a price is unknown
    cost_p95: float | None
    calls_mean: float
    wall_mean_s: float
    statuses: dict = field(default_factory=dict)
    scoring: str = ""
    truncated: int = 0            # base: contexts cut to the window


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def score_rows(ds: Dataset, tasks: list[Task], answered: list[Answered],
               judge: Callable[[list[tuple[Task, str]]], list[scoring.Scored]] | None
               ) -> list[dict]:
    by_id = {a.query_id: a for a in answered}
    pending = [(t, by_id.get(t.query_id)) for t in tasks]
    if judge is not None:
        judged = judge([(t, (a.answer if a else None) or "") for t, a in pending])
    else:
        judged = [ds.score(t, a.answer if a else None) for t, a in pending]
    rows = []
    for (task, a), scored in zip(pending, judged):
        rows.append({
            "dataset": ds.name, "query_id": task.query_id, "expected": task.expected,
            "answer": a.answer if a else None, "status": a.status if a else "missing",
            "score": scored.score, "extracted": scored.extracted, "scoring": scored.method,
            "cost_usd": a.cost_usd if a else None, "llm_calls": a.llm_calls if a else 0,
            "wall_s": a.wall_s if a else 0.0, "input_tokens": a.input_tokens if a else 0,
            "output_tokens": a.output_tokens if a else 0, "error": a.error if a else None,
            "truncated": bool(a and a.truncated)})
    return rows


def summarise(ds: Dataset, method: str, model: str, rows: list[dict]) -> Summary:
    costs = [r["cost_usd"] for r in rows]
    known = None if not rows or any(c is None for c in costs) else costs
    n = len(rows) or 1
    return Summary(
        dataset=ds.name, method=method, model=model, questions=len(rows),
        score=100 * sum(r["score"] for r in rows) / n,
        cost_mean=None if known is None else sum(known) / n,
        cost_p95=None if known is None else percentile(known, 95),
        calls_mean=sum(r["llm_calls"] for r in rows) / n,
        wall_mean_s=sum(r["wall_s"] for r in rows) / n,
        statuses=dict(Counter(r["status"] for r in rows)),
        scoring=", ".join(sorted({r["scoring"] for r in rows})),
        truncated=sum(1 for r in rows if r["truncated"]))


def llm_judge(model: str, gateway) -> Callable[[list[tuple[Task, str]]], list[scoring.Scored]]:
    """BrowseComp-Plus grading by a judge model, one call per answer."""
    def grade(pairs: list[tuple[Task, str]]) -> list[scoring.Scored]:
        from rlm_ray import llm
        from rlm_ray.llm.types import Completion

        requests = [{"messages": [{"role": "user", "content": scoring.JUDGE_PROMPT.format(
            question=t.question, response=answer or "(no answer)", correct=t.expected)}]}
            for t, answer in pairs]
        outcomes = llm.complete_many(requests, model=model, config=gateway) if requests else []
        graded = []
        for (_, answer), outcome in zip(pairs, outcomes):
            verdict = scoring.judge_verdict(outcome.text) if isinstance(outcome, Completion) else None
            graded.append(scoring.Scored(1.0 if verdict else 0.0,
                                         {True: "yes", False: "no", None: "unparsed"}[verdict],
                                         f"judge:{model}"))
        return graded
    return grade


def dry_run(ds: Dataset, tasks: list[Task], method: str, rlm: dict, concurrency: int) -> dict:
    """What the run would cost, without calling a model (`rlm-ray run --dry-run`'s
    estimate for RLM methods; the prompts' real token counts for `base`)."""
    from rlm_ray.llm.config import GatewayConfig
    from rlm_ray.llm.cost import price_for

    gateway = rlm.get("gateway") or GatewayConfig()
    plan: dict = {"benchmark": ds.name, "method": method, "tasks": len(tasks)}
    if method == "base":
        from rlm_ray.tokens import count_tokens

        window = base_window(rlm)
        inputs = [count_tokens(base_prompt(t, window)[0]) for t in tasks]
        price = price_for(rlm["model"], gateway, gateway.service_tier)
        cost = None if price is None else sum(price.cost(i, BASE_OUTPUT_TOKENS) for i in inputs)
        plan.update(model=rlm["model"], window_tokens=window, expected_calls=len(tasks),
                    expected_input_tokens=sum(inputs),
                    expected_output_tokens=BASE_OUTPUT_TOKENS * len(tasks),
                    estimated_cost_usd="unknown" if cost is None else round(cost, 4))
        return plan
    from rlm_ray.batch.plan import estimate
    from rlm_ray.batch.queries import Query

    queries = [Query(t.query_id, t.question, t.expected) for t in tasks]
    plan["context_chars"] = sum(len(t.base_context()) for t in tasks)
    plan.update(estimate(queries, rlm, calls_per_question=RLM_CALLS_PER_QUESTION[method],
                         total=len(queries), concurrency=concurrency))
    return plan


def run_method(ds: Dataset, tasks: list[Task], method: str, out: Path, rlm: dict,
               concurrency: int, judge_model: str | None,
               log: Callable[[str], None]) -> tuple[Summary, list[dict]]:
    answered = METHODS[method](tasks, MethodRun(out, rlm, concurrency, log))
    judge = llm_judge(judge_model, rlm["gateway"]) if judge_model and ds.judged else None
    rows = score_rows(ds, tasks, answered, judge)
    return summarise(ds, method, rlm["model"], rows), rows
