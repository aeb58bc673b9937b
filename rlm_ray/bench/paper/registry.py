"""The benchmark registry: name -> how to load its files and score an answer.

Each dataset module registers itself (`@dataset(...)` on its loader); the
command reads `DATASETS`, so a new benchmark is a new module, never a branch
in the command.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rlm_ray.bench.paper.scoring import Scored
from rlm_ray.bench.paper.tasks import Task


@dataclass(frozen=True)
class LoadOptions:
    limit: int | None = None
    seed: int = 0
    context_len: int | None = None      # OOLONG / OOLONG-Pairs window, S-NIAH haystack (tokens)
    docs_per_query: int = 1000          # BrowseComp-Plus documents per query (the paper's 1K)


Loader = Callable[[list[Path], LoadOptions], list[Task]]
Scorer = Callable[[Task, "str | None"], Scored]


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    source: str                      # where the publisher ships it
    load: Loader
    score: Scorer
    needs_data: bool = True          # False: generated (S-NIAH)
    judged: bool = False             # the benchmark grades with a judge model
    default_context_len: int | None = None


DATASETS: dict[str, Dataset] = {}
_MODULES = ("rlm_ray.bench.paper.data_oolong", "rlm_ray.bench.paper.data_codeqa",
            "rlm_ray.bench.paper.data_browsecomp", "rlm_ray.bench.paper.data_sniah")


def dataset(name: str, *, title: str, source: str, score: Scorer, **extra
            ) -> Callable[[Loader], Loader]:
    def decorate(load: Loader) -> Loader:
        if name in DATASETS:
            raise ValueError(f"benchmark {name!r} registered twice")
        DATASETS[name] = Dataset(name, title, source, load, score, **extra)
        return load
    return decorate


def datasets() -> dict[str, Dataset]:
    for module in _MODULES:
        importlib.import_module(module)
    return DATASETS
