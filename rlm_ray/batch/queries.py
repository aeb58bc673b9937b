"""The queries file: `.jsonl`, `.csv` or `.parquet` rows of `query_id`,
`question`, an optional expected `answer`, optional per-row RLM options and an
optional per-row plain-text context (`context` text, or `context_file`: a
path relative to the queries file's folder, an absolute path or an s3:// URI;
see rlm_ray/text_context.py for where and how it is read).

Everything the user can get wrong here (missing columns, empty ids,
duplicates, a bad option value) becomes one `UserError` line, before any
actor starts, so a batch never dies half-way through on input it could have
rejected up front.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from rlm_ray import storage
from rlm_ray.corpus.scopes import normalize_scope
from rlm_ray.errors import UserError
from rlm_ray.jsonl import iter_objects
from rlm_ray.text_context import DEFAULT_MAX_CONTEXT_BYTES, TextContext

# Per-row overrides of the batch's RLM settings, with the type each must have.
# Columns not listed here (and not required) are carried along untouched.
OPTION_COLUMNS: dict[str, type] = {
    "max_iterations": int,
    "max_depth": int,
    "max_sub_calls": int,
    "budget_usd": float,
    "timeout_s": float,
}
# Per-row text overrides: `system_prompt` is the root's own prompt for that row
# (a template with the same placeholders as `--system-prompt FILE`).
TEXT_OPTION_COLUMNS = ("system_prompt",)


@dataclass(frozen=True)
class Query:
    query_id: str
    question: str
    expected: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # The row's own text (it runs over this str instead of the corpus); None: the corpus.
    text_context: TextContext | None = None
    # Grids and scoped rows (batch/grid.py, corpus/scopes.py): the template a cell came
    # from, the path globs the question is about, and a digest of those documents
    # (filled by the driver from the corpus index; pipelines rerun a cell when it changes).
    template_id: str | None = None
    scope: tuple[str, ...] | None = None
    scope_sha256: str | None = None

    @property
    def question_hash(self) -> str:
        """Identity of the question text (pipelines rerun a query when it changes)."""
        return hashlib.sha256(self.question.encode()).hexdigest()[:16]


def _read_jsonl(data: bytes) -> pa.Table:
    rows = [row for _, row in iter_objects(data.decode("utf-8"), "queries")]
    # Columns as lists of Python values: a JSON file mixes ints and strings freely.
    names = list(dict.fromkeys(k for row in rows for k in row))
    return pa.table({n: pa.array([_jsonable(r.get(n)) for r in rows], type=pa.string())
                     for n in names}) if rows else pa.table({})


def _jsonable(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _read_csv(data: bytes) -> pa.Table:
    # The csv module keeps every cell a string: ids like "007" must not become 7.
    try:
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
        rows = [{k: (v if v != "" else None) for k, v in row.items() if k is not None}
                for row in reader]
        names = reader.fieldnames or []
    except (csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"queries CSV cannot be parsed: {exc}") from None
    return pa.table({n: pa.array([r.get(n) for r in rows], type=pa.string()) for n in names})


def _read_parquet(data: bytes) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(io.BytesIO(data))
    except pa.ArrowInvalid as exc:
        raise UserError(f"queries Parquet cannot be read: {exc}") from None


READERS: dict[str, Callable[[bytes], pa.Table]] = {
    ".jsonl": _read_jsonl,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}


def _reader_for(path: str) -> Callable[[bytes], pa.Table]:
    for suffix, reader in READERS.items():
        if path.lower().endswith(suffix):
            return reader
    raise UserError(f"queries file must end in one of {', '.join(READERS)}: {path}")


def _convert_option(name: str, value: Any, query_id: str) -> Any:
    kind = OPTION_COLUMNS[name]
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        raise UserError(f"query {query_id}: option {name} must be a {kind.__name__}, "
                        f"got {value!r}") from None
    if converted < 0:
        raise UserError(f"query {query_id}: option {name} must not be negative")
    return converted


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a numeric expected answer read from Parquet
    return str(value)


def _context_of(row: dict, where: str, base: str | None, max_bytes: int) -> TextContext | None:
    text, file = row.get("context"), _as_text(row.get("context_file"))
    if isinstance(text, bytes):   # a Parquet binary column
        text = text.decode("utf-8", errors="replace")
    elif text is not None and not isinstance(text, str):
        text = str(text)
    file = file.strip() if file and file.strip() else None
    if text is not None and file is not None:
        raise UserError(f"{where}: give `context` or `context_file`, not both")
    if file is not None:
        return TextContext(uri=resolve_context_file(file, base), max_bytes=max_bytes)
    return None if text is None else TextContext(text=text, max_bytes=max_bytes)


def resolve_context_file(file: str, base: str | None) -> str:
    """An s3:// URI or absolute path as given; a relative path against `base`
    (the queries file's folder), so the file works from any working directory."""
    if storage.is_s3(file):
        return file
    file = os.path.expanduser(file)
    if os.path.isabs(file):
        return file
    if base is not None and storage.is_s3(base):
        return storage.join(base, file)
    return os.path.abspath(os.path.join(base or "", file))


def queries_from_table(table: pa.Table, source: str = "queries", base: str | None = None,
                       max_context_bytes: int = DEFAULT_MAX_CONTEXT_BYTES) -> list[Query]:
    if table.num_rows == 0:
        raise UserError(f"{source} has no questions")
    missing = [c for c in ("query_id", "question") if c not in table.column_names]
    if missing:
        raise UserError(f"{source} lacks required column(s) {', '.join(missing)} "
                        f"(has: {', '.join(table.column_names) or 'none'})")
    options = [c for c in table.column_names if c in OPTION_COLUMNS]
    queries: list[Query] = []
    # Batch by batch: inline contexts exist once as Python strs, not also as one big list.
    rows = (row for batch in table.to_batches() for row in batch.to_pylist())
    for index, row in enumerate(rows, 1):
        query_id = _as_text(row["query_id"])
        question = _as_text(row["question"])
        if not query_id or not query_id.strip():
            raise UserError(f"{source} row {index}: empty query_id")
        if not question or not question.strip():
            raise UserError(f"{source} row {index} (query_id {query_id}): empty question")
        opts = {name: _convert_option(name, row[name], query_id)
                for name in options if row[name] not in (None, "")}
        opts.update({name: str(row[name]) for name in TEXT_OPTION_COLUMNS
                     if isinstance(row.get(name), str) and row[name].strip()})
        where = f"{source} row {index} (query_id {query_id})"
        context = _context_of(row, where, base, max_context_bytes)
        scope = normalize_scope(row.get("scope"), where)
        if scope is not None and context is not None:
            raise UserError(f"{where}: a scope selects documents of the corpus; a row with "
                            "its own context has none")
        queries.append(Query(query_id, question, _as_text(row.get("answer")), opts, context,
                             template_id=_as_text(row.get("template_id")), scope=scope))
    duplicates = sorted(q for q, n in Counter(q.query_id for q in queries).items() if n > 1)
    if duplicates:
        shown = ", ".join(duplicates[:10]) + (" ..." if len(duplicates) > 10 else "")
        raise UserError(f"{source} has duplicate query_id(s): {shown}")
    return queries


@dataclass(frozen=True)
class QueryFile:
    path: str
    sha256: str
    queries: list[Query]


def load_queries(path: str, max_context_bytes: int = DEFAULT_MAX_CONTEXT_BYTES) -> QueryFile:
    """Read and validate a queries file (local or s3://)."""
    reader = _reader_for(path)
    if not storage.exists(path):
        raise UserError(f"queries file not found: {path}")
    data = storage.read_bytes(path)
    base = path.rsplit("/", 1)[0] if storage.is_s3(path) else os.path.dirname(os.path.abspath(path))
    queries = queries_from_table(reader(data), source=f"queries file {path}", base=base,
                                 max_context_bytes=max_context_bytes)
    # The parsed table is garbage now; Arrow's allocator would keep its pages (with
    # inline contexts, ~2x the file) for the whole batch unless told to give them back.
    pa.default_memory_pool().release_unused()
    return QueryFile(path, hashlib.sha256(data).hexdigest(), queries)
