"""Answer scoring: exact match, a normalised match, and F1 over list answers.

The normalised match forgives what a person would not call a different
answer: case, surrounding/duplicated whitespace, punctuation, a trailing
period, and the order of a comma-separated list ("b.py, a.py" == "a.py,b.py").
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass

# Punctuation that separates or decorates words; `.`, `/`, `_` and `-` stay
# inside items because they carry meaning in paths, names and pairs (a.py, u1-u2).
_STRIP = "".join(c for c in string.punctuation if c not in "._/-=")
_STRIP_TABLE = str.maketrans(_STRIP, " " * len(_STRIP))
_SPACES = re.compile(r"\s+")


def _norm_item(text: str) -> str:
    text = text.lower().translate(_STRIP_TABLE)
    return _SPACES.sub(" ", text).strip().rstrip(".").strip()


def normalize(answer: str | None) -> str:
    """Canonical form: lower case, no decoration, list items sorted."""
    if answer is None:
        return ""
    items = [_norm_item(part) for part in str(answer).split(",")]
    items = [item for item in items if item]
    return ", ".join(sorted(items))


def exact_match(answer: str | None, expected: str | None) -> bool | None:
    if expected is None:
        return None
    return answer is not None and answer.strip() == expected.strip()


def normalized_match(answer: str | None, expected: str | None) -> bool | None:
    if expected is None:
        return None
    return answer is not None and normalize(answer) == normalize(expected)


def items(answer: str | None) -> set[str]:
    """The normalised set of a comma-separated answer's items."""
    return set(filter(None, normalize(answer).split(", "))) if answer else set()


def f1(answer: str | None, expected: str | None) -> float:
    """F1 of predicted vs expected list items (pairs, paths, names)."""
    return set_f1(items(answer), items(expected))


def set_f1(predicted: set, gold: set) -> float:
    """F1 of two sets (1.0 when both are empty, as nothing was missed)."""
    if not predicted and not gold:
        return 1.0
    hits = len(predicted & gold)
    if hits == 0:
        return 0.0
    precision, recall = hits / len(predicted), hits / len(gold)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class Accuracy:
    scored: int
    exact: int
    normalized: int

    @property
    def exact_rate(self) -> float | None:
        return self.exact / self.scored if self.scored else None

    @property
    def normalized_rate(self) -> float | None:
        return self.normalized / self.scored if self.scored else None


def accuracy_of(answers_table) -> Accuracy:
    """Recount accuracy from an `answers` table (rows with an expected answer)."""
    expected = answers_table.column("expected").to_pylist()
    exact = answers_table.column("exact_match").to_pylist()
    normal = answers_table.column("normalized_match").to_pylist()
    scored = [i for i, e in enumerate(expected) if e is not None]
    return Accuracy(len(scored), sum(bool(exact[i]) for i in scored),
                    sum(bool(normal[i]) for i in scored))
