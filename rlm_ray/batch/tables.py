"""The result tables of a batch run: `answers`, `calls`, `steps` (schemas of
docs/design.md, plus scoring columns in `answers`), written as Parquet
parts as questions finish, and read back for resume and `show`.

Crash safety comes from two rules. Every part is written to a temp name and
renamed (storage.write_bytes_atomic), so a part is whole or absent. And one
flush writes `calls/` and `steps/` before `answers/`, all three with the same
part name: a question counts as finished only once its answers part exists,
and readers take a question's calls and steps from the part that holds its
chosen answer row, so a crash between the writes leaves no visible trace and
a rerun never doubles rows. Part names carry the writer's lease generation,
and readers skip a part the lease's fence does not admit (fence.py): a
stalled driver's write that landed after a takeover never counts.
"""
from __future__ import annotations

import io
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rlm_ray import storage
from rlm_ray.batch.fence import COMMIT_TABLE, part_name
from rlm_ray.batch.lease import current_fence

TS = pa.timestamp("us", tz="UTC")

ANSWERS = pa.schema([
    ("query_id", pa.string()), ("question", pa.string()), ("answer", pa.string()),
    ("status", pa.string()), ("error", pa.string()), ("iterations", pa.int64()),
    ("max_depth_reached", pa.int64()), ("llm_calls", pa.int64()),
    ("input_tokens", pa.int64()), ("output_tokens", pa.int64()),
    ("cost_usd", pa.float64()), ("wall_s", pa.float64()), ("model", pa.string()),
    ("started_at", TS), ("finished_at", TS),
    # Scoring (null when the queries file gave no expected answer).
    ("expected", pa.string()), ("exact_match", pa.bool_()), ("normalized_match", pa.bool_()),
    # Prompt caching: input tokens billed as cache reads / writes, dollars it saved.
    ("cached_tokens", pa.int64()), ("cache_write_tokens", pa.int64()),
    ("cache_saved_usd", pa.float64()),
    # A row's own text context: its size and hash, never the text (null over a corpus).
    ("context_chars", pa.int64()), ("context_sha256", pa.string()),
    # Counted attempts (driver-side errors, timeouts) and host deaths the question
    # was in flight at (retried without counting an attempt; see batch/driver.py).
    ("attempts", pa.int64()), ("host_losses", pa.int64()),
    # Grids and scoped rows: the template a cell came from, the path globs it was
    # about, and the digest of those documents it ran over (null without a scope).
    ("template_id", pa.string()), ("scope", pa.list_(pa.string())),
    ("scope_sha256", pa.string()),
])
CALLS = pa.schema([
    ("query_id", pa.string()), ("call_id", pa.string()), ("parent_call_id", pa.string()),
    # kind: root | sub | rlm | compact (the root model summarising older turns)
    ("depth", pa.int64()), ("kind", pa.string()), ("model", pa.string()),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
    ("cost_usd", pa.float64()), ("latency_s", pa.float64()), ("retries", pa.int64()),
    ("cache_hit", pa.bool_()), ("status", pa.string()),
    # Appended later (columns are only ever appended, so older tables still read): billing detail.
    ("cached_tokens", pa.int64()), ("cache_write_tokens", pa.int64()),
    ("reasoning_tokens", pa.int64()), ("service_tier", pa.string()),
    ("cache_saved_usd", pa.float64()),
])
STEPS = pa.schema([
    ("query_id", pa.string()), ("call_id", pa.string()), ("iteration", pa.int64()),
    ("code", pa.string()), ("output", pa.string()), ("error", pa.string()),
    ("elapsed_s", pa.float64()),
])
SCHEMAS: dict[str, pa.Schema] = {"answers": ANSWERS, "calls": CALLS, "steps": STEPS}
# COMMIT_TABLE (answers) is written last in a flush: its presence is what makes the others count.
STATUSES = ("ok", "error", "budget_exceeded", "timeout", "max_iterations", "invalid_output")
# Typed answers add this column to `answers` (its type from the run's schema, batch/typed.py).
OUTPUT_COLUMN = "output"
PART_COLUMN = "_part"


def conform(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (extra keys dropped, missing keys null) as a table of exactly `schema`."""
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


@dataclass
class FinishedQuestion:
    """Everything one question contributes to the three tables."""

    answer: dict
    calls: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)


class TableWriter:
    """Buffers finished questions; `maybe_flush` writes a part every
    `flush_every` questions or `flush_s` seconds, whichever comes first, so
    a crash loses at most that many finished answers (and the in-flight ones)."""

    def __init__(self, out_uri: str, flush_every: int = 8, flush_s: float = 5.0,
                 generation: int | None = None, output_schema=None) -> None:
        self.out_uri = out_uri
        self.generation = generation   # the writer's lease generation, stamped into part names
        self.schemas = dict(SCHEMAS)
        self._output_schema = output_schema      # engine OutputSchema: answers get `output`
        if output_schema is not None:
            from rlm_ray.batch.typed import output_field

            self.schemas[COMMIT_TABLE] = ANSWERS.append(output_field(output_schema))
        self.flush_every = flush_every
        self.flush_s = flush_s
        self._pending: list[FinishedQuestion] = []
        self._last_flush = time.monotonic()
        self.parts_written = 0
        self.rows_written = 0

    def add(self, finished: FinishedQuestion) -> None:
        self._pending.append(finished)

    def maybe_flush(self) -> bool:
        due = (len(self._pending) >= self.flush_every
               or (self._pending and time.monotonic() - self._last_flush >= self.flush_s))
        return self.flush() if due else False

    def answers_table(self, answers: list[dict]) -> pa.Table:
        """Answer rows as this writer's answers parts hold them (rlm_ray.data
        returns them as a Ray Data block, so both paths share one row shape)."""
        return conform([self._typed(a) for a in answers], self.schemas[COMMIT_TABLE])

    def flush(self) -> bool:
        self._last_flush = time.monotonic()
        if not self._pending:
            return False
        batch, self._pending = self._pending, []
        name = part_name(self.generation)
        rows = {
            "calls": [c for f in batch for c in f.calls],
            "steps": [s for f in batch for s in f.steps],
            "answers": [self._typed(f.answer) for f in batch],
        }
        for table in ("calls", "steps", COMMIT_TABLE):  # answers last: the commit point
            data = _parquet_bytes(conform(rows[table], self.schemas[table]))
            storage.write_bytes_atomic(storage.join(self.out_uri, table, name), data)
        self.parts_written += 1
        self.rows_written += len(batch)
        return True

    def _typed(self, answer: dict) -> dict:
        if self._output_schema is None:
            return answer
        from rlm_ray.batch.typed import to_arrow_value

        value = to_arrow_value(answer.get(OUTPUT_COLUMN), self._output_schema.schema)
        return {**answer, OUTPUT_COLUMN: value}


def _part_names(out_uri: str, table: str) -> list[str]:
    names = [e.relpath for e in storage.list_prefix(storage.join(out_uri, table))]
    # Only top-level, whole parts: temp files of an interrupted write start with ".tmp-".
    return sorted(n for n in names if n.startswith("part-") and n.endswith(".parquet"))


def _to_schema(part: pa.Table, schema: pa.Schema) -> pa.Table:
    """A part written before a column was added gets that column as nulls."""
    for field_ in schema:
        if field_.name not in part.column_names:
            part = part.append_column(field_, pa.nulls(part.num_rows, type=field_.type))
    return part.select(schema.names).cast(schema)


def _read_parts(out_uri: str, table: str, names: Iterable[str]) -> pa.Table:
    raw = []
    for name in names:
        data = storage.read_bytes(storage.join(out_uri, table, name))
        raw.append((name, pq.read_table(io.BytesIO(data))))
    schema = SCHEMAS[table]
    # A typed run's `output` column is kept (one schema per folder: batch/typed.py).
    typed = next((p.schema.field(OUTPUT_COLUMN) for _, p in raw
                  if OUTPUT_COLUMN in p.column_names), None)
    if typed is not None:
        schema = schema.append(typed)
    tables = []
    for name, part in raw:
        part = _to_schema(part, schema)
        tables.append(part.append_column(PART_COLUMN, pa.array([name] * part.num_rows,
                                                              type=pa.string())))
    if not tables:
        return schema.empty_table().append_column(
            PART_COLUMN, pa.array([], type=pa.string()))
    return pa.concat_tables(tables)


@dataclass
class RunTables:
    """The committed, deduplicated view of a result folder."""

    answers: pa.Table
    calls: pa.Table
    steps: pa.Table

    def table(self, name: str) -> pa.Table:
        return getattr(self, name)


def _latest_per_query(answers: pa.Table) -> pa.Table:
    """One row per query_id: the latest finished row (a retried question's new
    result supersedes its old error row)."""
    if answers.num_rows == 0:
        return answers
    order = answers.sort_by([("finished_at", "descending"), (PART_COLUMN, "descending")])
    seen: set[str] = set()
    keep = []
    for index, query_id in enumerate(order.column("query_id").to_pylist()):
        if query_id not in seen:
            seen.add(query_id)
            keep.append(index)
    return order.take(keep).sort_by("query_id")


def _rows_of_chosen_parts(table: pa.Table, chosen: pa.Table) -> pa.Table:
    if table.num_rows == 0:
        return table
    keys = pa.array([f"{q}\x00{p}" for q, p in zip(chosen.column("query_id").to_pylist(),
                                                   chosen.column(PART_COLUMN).to_pylist())])
    row_keys = pc.binary_join_element_wise(table.column("query_id"), table.column(PART_COLUMN),
                                           "\x00")
    return table.filter(pc.is_in(row_keys, value_set=keys))


def read_run(out_uri: str, with_details: bool = True) -> RunTables:
    """Load a result folder: committed parts only, one answer per query_id,
    and the calls/steps that belong to exactly those answers."""
    fence = current_fence(out_uri)
    answer_parts = [n for n in _part_names(out_uri, COMMIT_TABLE)
                    if fence is None or fence.admits(n)]
    answers = _latest_per_query(_read_parts(out_uri, COMMIT_TABLE, answer_parts))
    empty = {t: SCHEMAS[t].empty_table() for t in ("calls", "steps")}
    details = dict(empty)
    if with_details and answers.num_rows:
        used = sorted(set(answers.column(PART_COLUMN).to_pylist()))
        for table in ("calls", "steps"):
            present = set(_part_names(out_uri, table))
            raw = _read_parts(out_uri, table, [p for p in used if p in present])
            details[table] = _rows_of_chosen_parts(raw, answers).drop_columns([PART_COLUMN])
    return RunTables(answers.drop_columns([PART_COLUMN]), details["calls"], details["steps"])


def finished_statuses(out_uri: str) -> dict[str, str]:
    """query_id -> status of its latest committed answer (for resume)."""
    answers = read_run(out_uri, with_details=False).answers
    return dict(zip(answers.column("query_id").to_pylist(), answers.column("status").to_pylist()))


def latest_statuses(out_uri: str) -> pa.Table:
    """query_id, status of each query's latest committed answer, reading only the
    columns that decide it, batch by batch (planning a large grid's resume check
    must not load every answer's text)."""
    columns = ("query_id", "status", "finished_at")
    parts = []
    fence = current_fence(out_uri)   # the same parts read_run counts, no others
    for name in _part_names(out_uri, COMMIT_TABLE):
        if fence is not None and not fence.admits(name):
            continue
        data = storage.read_bytes(storage.join(out_uri, COMMIT_TABLE, name))
        parquet = pq.ParquetFile(io.BytesIO(data))
        schema = pa.schema([ANSWERS.field(c) for c in columns])
        part = pa.Table.from_batches(
            [b.select(list(columns)).cast(schema) for b in parquet.iter_batches(
                columns=list(columns), use_threads=False)], schema=schema)
        parts.append(part.append_column(PART_COLUMN, pa.array([name] * part.num_rows,
                                                               type=pa.string())))
    if not parts:
        return pa.table({"query_id": pa.array([], pa.string()),
                         "status": pa.array([], pa.string())})
    return _latest_per_query(pa.concat_tables(parts)).select(["query_id", "status"])
