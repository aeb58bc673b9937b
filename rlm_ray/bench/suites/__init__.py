"""The benchmark suites, by name. Adding a suite is one entry here."""
from __future__ import annotations

from rlm_ray.bench.suites import codeqa, oolong, sniah
from rlm_ray.bench.suites.base import Case, Question, Suite

SUITES: dict[str, Suite] = {
    "sniah": Suite("sniah", sniah.generate, sniah.SIZES,
                   "single needle in a haystack of stdlib source, 2^13..2^23 tokens"),
    "oolong": Suite("oolong", oolong.generate, oolong.SIZES,
                    "aggregation over labelled records: counts, most frequent, user pairs"),
    "codeqa": Suite("codeqa", codeqa.generate, codeqa.SIZES,
                    "questions about the CPython stdlib answered exactly by ast"),
}

__all__ = ["SUITES", "Case", "Question", "Suite"]
