"""The latency floor: how soon any engine could finish, given the provider's
latency, whatever its CPU. Every bench that prints a wall prints it beside
this, computed here and only here."""
from __future__ import annotations

from collections.abc import Iterable


def latency_floor(calls: Iterable[dict], latency_s: float) -> tuple[int, int, float]:
    """(root turns, sub-call waves, seconds) of ONE question: each root turn
    and each wave of sub-calls waits one provider latency however fast the
    engine is. Rows come in call order (a root turn, then the sub-calls its
    code made); the sub-call rows between two root turns count as ONE wave,
    so a turn that fans out twice is under-counted and the floor never
    overstates."""
    roots = waves = 0
    previous = "root"
    for call in calls:
        kind = call["kind"]
        roots += kind == "root"
        waves += kind == "sub" and previous != "sub"
        previous = kind
    return roots, waves, (roots + waves) * latency_s


def batch_floor(calls: Iterable[dict], latency_s: float, concurrency: int) -> tuple[float, float]:
    """(seconds, the longest question's floor) of a batch whose calls rows
    carry `query_id`, in call order within each question. Two lower bounds,
    the larger wins: the slowest question's own floor, and the questions'
    floors summed over the `concurrency` slots they share."""
    by_question: dict[str, list[dict]] = {}
    for call in calls:
        by_question.setdefault(call["query_id"], []).append(call)
    floors = [latency_floor(rows, latency_s)[2] for rows in by_question.values()]
    if not floors:
        return 0.0, 0.0
    longest = max(floors)
    return max(longest, sum(floors) / max(1, concurrency)), longest
