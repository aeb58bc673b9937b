"""rlm-ray as a step of a Ray Data pipeline.

    from rlm_ray.data import ProcessorConfig, build_processor

    processor = build_processor(ProcessorConfig(corpus="s3://bucket/corpus",
                                                rlm={"model": "openai/gpt-4.1-mini"}))
    answers = processor(ray.data.read_parquet("s3://bucket/questions/"))
    answers.write_parquet("s3://bucket/answers/")

The input rows are those of a queries file (batch/queries.py): `query_id`,
`question`, an optional expected `answer`, per-row options (`max_iterations`,
`timeout_s`, ... `system_prompt`) and an optional per-row text `context` or
`context_file`. The output rows have exactly the columns of the `answers`
table, one per input row, in the order of each block: the block is made by the
same TableWriter that writes `rlm-ray run`'s answers parts
(`TableWriter.answers_table`), so a column added there appears here too.

Each Ray Data actor of the `map_batches` pool owns a HostPool (batch/pool.py)
and drives its batch of questions through the same loop `rlm-ray run` uses
(batch/driver.py `Driver`: retries on a fresh REPL, host-loss handling,
dead letters, the wall-time backstop), so the engine, gateway and budgets are
the same code. What makes the limits cluster-wide needs no wiring: the rate
limiter of a model is one named, detached Ray actor (llm/limiter_client.py)
and a question's budgets and the batch's spend cap live in the named budget
bank (llm/budget.py), so every host of every data actor, and any `rlm-ray run`
on the same cluster, draws from the same ones.

What it does not do, and `rlm-ray run` does: resume (a rerun answers every
row again; only the gateway's response cache, when given, makes replayed calls
free), the results-folder lease, `run.json`, progress, the check for
duplicate query ids across the whole dataset. Lineage is optional: with
`lineage_uri`, each data actor also writes its rows' answers, calls and steps
as parts of a results folder there, readable by `rlm-ray show`.

Errors inside the processor never stop the pipeline: a row that cannot run
(an empty question, a bad option, no context and no corpus, an unreadable
context file) and a question that kept failing become answer rows with status
`error` and the reason in `error`. Bad configuration (no model, a corpus that
is not there, a dataset without `query_id`/`question`) is one UserError line
when the processor is built or applied, before anything runs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from rlm_ray.errors import UserError
from rlm_ray.text_context import DEFAULT_MAX_CONTEXT_BYTES

REQUIRED_COLUMNS = ("query_id", "question")


@dataclass
class ProcessorConfig:
    """What `rlm-ray run` takes on its command line, for a Ray Data step.

    `rlm`: the RLM settings of every question (the keyword arguments of
    `rlm_ray.engine.RLM`: model, sub_model, api_base, gateway, max_iterations,
    timeout_s, budget_usd per question, ...), overridden per row by option columns.
    `actors`: Ray Data actors answering batches at once; each owns one RLM host
    actor with up to `questions_per_actor` questions in flight (questions, not
    processes: they wait on models and sandboxes). `batch_size`: rows per Ray
    Data batch (default `questions_per_actor`; a batch's slowest question holds
    its actor, so keep it near the questions in flight).
    """

    rlm: dict
    corpus: str | None = None            # corpus URI; None when every row has its own context
    actors: int = 1
    questions_per_actor: int = 8
    batch_size: int | None = None
    budget_usd: float | None = None      # the whole dataset: a spend cap shared by every actor
    max_attempts: int = 3
    context_base: str | None = None      # folder relative `context_file` paths are read from
    max_context_bytes: int = DEFAULT_MAX_CONTEXT_BYTES
    lineage_uri: str | None = None       # also write answers/calls/steps parts here
    host_env: dict[str, str] = field(default_factory=dict)   # extra env of host processes


class Processor:
    """`processor(ds) -> ds`: question rows in, answer rows out (lazy, as Ray Data is)."""

    def __init__(self, config: ProcessorConfig, rlm: dict) -> None:
        self.config = config
        self.rlm = rlm

    def __call__(self, dataset: Any) -> Any:
        _check_columns(dataset)
        config = self.config
        return dataset.map_batches(
            _AnswerBatches,
            fn_constructor_kwargs={"config": config, "rlm": self.rlm},
            batch_size=config.batch_size or config.questions_per_actor,
            batch_format="pyarrow",
            concurrency=config.actors,
            # The actor waits on its host; hosts wait on models: neither needs a CPU.
            num_cpus=0)


def build_processor(config: ProcessorConfig) -> Processor:
    """Validate `config` (one UserError line if wrong) and return the processor."""
    from rlm_ray._ray import ensure_ray
    from rlm_ray.batch.runner import with_spend_cap
    from rlm_ray.engine import RLM

    for name in ("actors", "questions_per_actor", "max_attempts", "max_context_bytes"):
        if int(getattr(config, name)) < 1:
            raise UserError(f"processor {name} must be >= 1, got {getattr(config, name)}")
    if config.batch_size is not None and config.batch_size < 1:
        raise UserError(f"processor batch_size must be >= 1, got {config.batch_size}")
    if config.budget_usd is not None and config.budget_usd <= 0:
        raise UserError(f"processor budget_usd must be > 0, got {config.budget_usd}")
    if not isinstance(config.rlm, dict):
        raise UserError("processor rlm must be a dict of RLM settings (model=..., ...)")
    if not config.rlm.get("model"):
        raise UserError("processor rlm needs a model (e.g. rlm={'model': 'openai/gpt-4.1-mini'})")
    try:
        RLM(**config.rlm)   # the settings check `rlm-ray query` and `run` make
    except TypeError as exc:   # an unknown or misspelt setting
        raise UserError(f"processor rlm: {exc}") from None
    if config.corpus is not None:
        from rlm_ray.corpus import Corpus

        Corpus.open(config.corpus)   # reads the manifest only: a wrong URI fails here
    ensure_ray()
    # Created here, once: every data actor's questions reserve from this one cap.
    rlm = with_spend_cap(config.rlm, config.budget_usd)
    # Workers run elsewhere: a relative context_file is relative to where the pipeline is built.
    base = os.path.abspath(config.context_base or os.getcwd())
    config = replace(config, context_base=base)
    return Processor(config, rlm)


def _check_columns(dataset: Any) -> None:
    try:
        schema = dataset.schema(fetch_if_missing=False)
    except TypeError:   # a Ray Data without the keyword
        schema = None
    names = list(getattr(schema, "names", None) or [])
    if not names:
        return   # unknown before execution: rows without the columns become error rows
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise UserError(f"the question dataset lacks column(s) {', '.join(missing)} "
                        f"(has: {', '.join(names)})")


class _Collected:
    """Stands in for the batch loop's TableWriter: keeps the finished rows for
    the output block and, with a lineage folder, lets the writer (pointed at
    that folder) write them there too."""

    def __init__(self, writer: Any, lineage: bool) -> None:
        self.writer = writer
        self.lineage = lineage
        self.finished: dict[str, Any] = {}

    def add(self, finished: Any) -> None:
        self.finished[finished.answer["query_id"]] = finished
        if self.lineage:
            self.writer.add(finished)

    def maybe_flush(self) -> bool:
        return False   # lineage parts are written once per Ray Data batch

    def flush(self) -> bool:
        return self.writer.flush() if self.lineage else False


class _NoLease:
    """A Ray Data step writes no results folder of its own: nothing to hold."""

    generation = None
    record = None

    def ensure_held(self) -> None:
        return None

    def lost_reason(self) -> None:
        return None


class _AnswerBatches:
    """One Ray Data actor: a host pool kept for its life, a batch at a time."""

    def __init__(self, config: ProcessorConfig, rlm: dict) -> None:
        from rlm_ray.batch.pool import HostPool

        self.config = config
        self.rlm = rlm
        self.corpus = None
        if config.corpus is not None:
            from rlm_ray.corpus import Corpus

            self.corpus = Corpus.open(config.corpus)
        self.hosts = HostPool(hosts=1, concurrency=config.questions_per_actor,
                              actor_env=config.host_env)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        queries, refused = self._parse(batch, rows)
        loop = self._loop(list(queries.values()))
        finished = {**refused, **self._answer(loop, queries)}
        # In input order, keyed by position: a row refused before it had an id gets its row too.
        answers = [finished[index].answer for index in range(len(rows))]
        # Shaped by the writer `rlm-ray run` writes its answers parts with.
        return loop.writer.writer.answers_table(answers)

    def _parse(self, batch: pa.Table, rows: list[dict]) -> tuple[dict, dict]:
        """index -> Query for rows that can run; index -> dead-letter rows for the rest."""
        from rlm_ray.batch import rows as row_builder
        from rlm_ray.batch.queries import Query, queries_from_table

        queries, refused, seen = {}, {}, set()
        for index, row in enumerate(rows):
            try:
                if not all(c in row for c in REQUIRED_COLUMNS):
                    raise UserError(f"the row lacks column(s) {', '.join(REQUIRED_COLUMNS)}")
                query = queries_from_table(batch.slice(index, 1), source="question row",
                                           base=self.config.context_base,
                                           max_context_bytes=self.config.max_context_bytes)[0]
                if query.query_id in seen:
                    raise UserError(f"query_id {query.query_id} is given twice in one batch")
                if query.text_context is None and self.corpus is None:
                    raise UserError("the row has no `context` or `context_file` and the "
                                    "processor has no corpus")
                queries[index] = query
                seen.add(query.query_id)
            except UserError as exc:
                bare = Query(str(row.get("query_id") or ""), str(row.get("question") or ""))
                refused[index] = row_builder.dead_letter(bare, str(exc), row_builder.utc_now(),
                                                         self.rlm.get("model"))
        return queries, refused

    def _loop(self, todo: list) -> Any:
        """The loop `rlm-ray run` drives, over this batch's runnable questions."""
        from rlm_ray.batch.progress import Tally
        from rlm_ray.batch.driver import BatchOptions, Driver

        opts = BatchOptions(concurrency=self.config.questions_per_actor,
                            max_attempts=self.config.max_attempts,
                            budget_usd=self.config.budget_usd, progress=False,
                            flush_every=1 << 30, flush_s=float("inf"))
        lineage = self.config.lineage_uri
        batch = Driver(self.corpus, todo, lineage or "", self.rlm, opts, Tally(total=len(todo)),
                       self.hosts, _NoLease())
        batch.writer = _Collected(batch.writer, lineage=bool(lineage))
        return batch

    def _answer(self, batch: Any, queries: dict[int, Any]) -> dict[int, Any]:
        from rlm_ray.batch import rows as row_builder

        collected = batch.writer
        error = None
        try:
            batch.drive()
        except Exception as exc:  # noqa: BLE001  (never a dead pipeline: the rows say why)
            error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        done = {}
        for index, query in queries.items():
            item = collected.finished.get(query.query_id)
            if item is None:   # never finished: the loop broke, or the budget stopped it
                budget = batch.budget_stopped and error is None
                reason = ("not started: the processor's budget_usd was reached" if budget
                          else error or "not answered")
                item = row_builder.dead_letter(query, reason, row_builder.utc_now(),
                                               self.rlm.get("model"),
                                               status="budget_exceeded" if budget else "error")
            done[index] = item
        return done

    def __del__(self) -> None:
        try:
            self.hosts.shutdown()
        except Exception:  # noqa: BLE001  (interpreter teardown: the hosts die with us anyway)
            pass
