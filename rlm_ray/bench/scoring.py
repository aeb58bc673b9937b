"""Scoring of benchmark answers, per question family.

The string-level measures live in `rlm_ray.batch.scoring` (exact, normalised
match, F1 over comma-separated items); this module only decides which one is
a family's score: single-value families (a code, a count, a label, one path)
score 1 or 0 on a normalised match, list families (paths, class names, user
pairs, per-path counts) score the F1 of their items, as OOLONG-Pairs does.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rlm_ray.batch import scoring as measures


def _match(answer: str | None, expected: str) -> float:
    return 1.0 if measures.normalized_match(answer, expected) else 0.0


def _f1(answer: str | None, expected: str) -> float:
    return measures.f1(answer, expected)


Metric = Callable[[str | None, str], float]
METRICS: dict[str, Metric] = {"match": _match, "f1": _f1}

# Which measure is a family's score (families: docs/architecture.md).
FAMILY_METRIC: dict[str, str] = {
    "needle": "match",
    "label-count": "match",
    "label-top": "match",
    "params": "match",
    "suffix": "match",
    "define": "f1",
    "subclass": "f1",
    "label-pairs": "f1",
    "delegate": "f1",
}


@dataclass(frozen=True)
class Score:
    score: float    # the family's measure, in [0, 1]
    exact: bool     # strict string equality, reported alongside


def score(family: str, answer: str | None, expected: str) -> Score:
    metric = METRICS[FAMILY_METRIC.get(family, "match")]
    return Score(metric(answer, expected), bool(measures.exact_match(answer, expected)))
