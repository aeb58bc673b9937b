"""What a benchmark loader produces and how it reads the publishers' files.

A `Task` is one question with its context, in the shape the paper gave it to
the model: a `str` (OOLONG windows, LongBench-v2 text, S-NIAH haystacks) or a
set of documents that becomes a corpus (BrowseComp-Plus). The expected answer
is kept as the publisher wrote it; `meta` carries what the scorer needs (an
answer type, a gold letter) and never reaches the model.
"""
from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlm_ray.errors import UserError

DATA_SUFFIXES = (".parquet", ".json", ".jsonl")


@dataclass(frozen=True)
class Task:
    query_id: str
    question: str
    expected: str
    context_text: str | None = None            # a str context, as the paper's REPL held it
    documents: tuple[tuple[str, str], ...] = ()  # (path, text) of a per-task corpus
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "corpus" if self.documents else "text"

    def base_context(self) -> str:
        """The whole context as one text, for a direct (base) model call."""
        if self.context_text is not None:
            return self.context_text
        return "\n\n".join(f"Document {path}:\n{text}" for path, text in self.documents)


def data_files(paths: list[str]) -> list[Path]:
    """The data files under `paths` (files as given, folders walked), in a stable order."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*")
                            if p.is_file() and p.name.lower().endswith(DATA_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"--data: no such file or folder: {raw}")
    if not found:
        raise UserError(f"--data: no .parquet/.json/.jsonl files in {', '.join(paths)}")
    return found


def read_rows(path: Path, columns: list[str] | None = None,
              where: dict[str, Any] | None = None) -> list[dict]:
    """Rows of one Parquet / JSON (a list of objects) / JSONL file; `where`
    keeps rows whose columns equal the given values (pushed down into Parquet,
    so a multi-GB shard is not loaded whole to pick a few rows)."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
            wanted = [c for c in columns if c in schema.names] if columns else None
            usable = {k: v for k, v in (where or {}).items() if k in schema.names}
            filters = [(k, "=", v) for k, v in usable.items()] or None
            rows = pq.read_table(path, columns=wanted, filters=filters).to_pylist()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise UserError(f"{path}: not a readable Parquet file ({exc})") from None
        return _matching(rows, where)
    if name.endswith(".jsonl"):
        from rlm_ray.jsonl import iter_objects

        with open(path, encoding="utf-8") as f:
            return _matching([row for _, row in iter_objects(f, str(path))], where)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise UserError(f"{path}: expected a JSON list of objects")
    return _matching(value, where)


def _matching(rows: list[dict], where: dict[str, Any] | None) -> list[dict]:
    if not where:
        return rows
    return [r for r in rows if all(k not in r or r[k] == v for k, v in where.items())]


def require_columns(rows: list[dict], columns: tuple[str, ...], source: str) -> None:
    """Every row has the published columns (a wrong file fails here, in one line)."""
    for index, row in enumerate(rows, 1):
        missing = [c for c in columns if c not in row]
        if missing:
            raise UserError(f"{source}: row {index} lacks the published column(s) "
                            f"{', '.join(missing)} (has: {', '.join(sorted(row)) or 'none'})")


def sample(items: list, limit: int | None, seed: int) -> list:
    """A seeded sample without replacement, in the file's order (the paper samples
    its BrowseComp-Plus queries at random; a fixed seed makes a run repeatable)."""
    if limit is None or limit >= len(items):
        return list(items)
    chosen = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in chosen]


def iter_files(files: list[Path], suffixes: tuple[str, ...]) -> Iterator[Path]:
    return (f for f in files if f.name.lower().endswith(suffixes))
