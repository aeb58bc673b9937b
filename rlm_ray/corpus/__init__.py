"""The corpus layer: `ingest` sources into Parquet shards + manifest.json, and
the `Corpus` handle (DuckDB over local or s3:// shards) the RLM engine uses.

The names are resolved on first use, so importing a light submodule (the
CLI's `commands`, `caps`) does not load DuckDB and pyarrow."""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Corpus": "rlm_ray.corpus.handle", "CorpusQueryError": "rlm_ray.corpus.sql_gate",
            "ingest": "rlm_ray.corpus.ingestion"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
