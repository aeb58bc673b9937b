"""Scheduled pipelines: one YAML spec (sources, corpus, questions, model,
limits, budget, output) run once per date by cron or any scheduler.

Each run re-ingests incrementally, picks the questions to answer (all, or
only those new or changed since earlier dates: a question is unchanged when
its query_id, question text and the corpus content (or, for a row with its
own text context, that text; for a grid cell or scoped row, the documents of
its scope) all match an earlier date's `ok` answer), and
writes a batch under `<output>/run_date=<date>/`.
A date whose partition is complete is never touched again, so a scheduler
that fires twice changes nothing; an incomplete one (a crash) resumes. Two
fires of one date at the same moment meet at the partition's lease: the
second refuses with the holder's name instead of answering everything twice.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from rlm_ray import storage
from rlm_ray.batch.manifest import read_run_info
from rlm_ray.batch.queries import Query, load_queries, queries_from_table
from rlm_ray.batch.tables import read_run
from rlm_ray.errors import UserError

RERUN_MODES = ("changed", "all")
PARTITION = re.compile(r"^run_date=(\d{4}-\d{2}-\d{2})/run\.json$")


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    sources: list[str]
    corpus: str
    output: str
    questions: str | list[dict]
    model: str
    sub_model: str | None = None
    api_base: str | None = None
    rerun: str = "changed"
    budget_usd: float | None = None
    cache: str | None = None            # default <output>/cache: shared by all dates
    exclude: list[str] = field(default_factory=list)
    chunk_tokens: int = 2000
    limits: dict[str, Any] = field(default_factory=dict)
    prompt_cache: str = "auto"          # cost levers (llm/options.py): auto | off
    service_tier: str | None = None     # e.g. flex: a scheduled batch can wait
    price_like: Any = None              # ENTRY or {model: ENTRY}
    output_schema: str | dict | None = None   # typed answers: a JSON Schema file or mapping
    for_each: str | None = None         # a question grid: questions are templates (batch/grid.py)
    pacing: Any = None                  # limits.rpm/tpm spent even | burst, or {model: mode}

    LIMIT_KEYS = ("max_depth", "max_iterations", "timeout_s", "question_budget_usd",
                  "rpm", "tpm", "concurrency", "root_window")


def load_spec(path: str) -> PipelineSpec:
    import yaml

    if not storage.exists(path):
        raise UserError(f"pipeline spec not found: {path}")
    try:
        raw = yaml.safe_load(storage.read_bytes(path))
    except yaml.YAMLError as exc:
        raise UserError(f"pipeline spec {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"pipeline spec {path} must be a mapping")
    known = set(PipelineSpec.__dataclass_fields__) - {"LIMIT_KEYS"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"pipeline spec {path}: unknown key(s) {', '.join(unknown)}")
    missing = [k for k in ("name", "sources", "corpus", "output", "questions", "model")
               if not raw.get(k)]
    if missing:
        raise UserError(f"pipeline spec {path}: missing {', '.join(missing)}")
    if isinstance(raw["sources"], str):
        raw["sources"] = [raw["sources"]]
    if raw.get("rerun", "changed") not in RERUN_MODES:
        raise UserError(f"pipeline spec {path}: rerun must be one of {', '.join(RERUN_MODES)}")
    bad_limits = sorted(set(raw.get("limits") or {}) - set(PipelineSpec.LIMIT_KEYS))
    if bad_limits:
        raise UserError(f"pipeline spec {path}: unknown limit(s) {', '.join(bad_limits)}")
    spec = PipelineSpec(**{k: v for k, v in raw.items() if v is not None})
    output_schema_of(spec)   # an unusable schema fails at load, not at the first date
    return spec


def output_schema_of(spec: PipelineSpec):
    """The spec's output schema (engine OutputSchema) or None."""
    from rlm_ray.engine.output_schema import load, parse

    if spec.output_schema is None:
        return None
    if isinstance(spec.output_schema, dict):
        return parse(spec.output_schema, "pipeline spec output_schema")
    return load(str(spec.output_schema))


def parse_date(text: str | None) -> str:
    if text is None:
        return dt.datetime.now(dt.timezone.utc).date().isoformat()
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise UserError(f"--date must be YYYY-MM-DD, got {text!r}") from None


def corpus_content_hash(manifest: dict) -> str:
    """Identity of the corpus *content*, not of when it was ingested: the
    content-addressed names of its docs table and shards."""
    keyed = [manifest.get("docs_file"), sorted(s.get("key") or s.get("file") for s in
                                               manifest.get("shards") or [])]
    return hashlib.sha256(json.dumps(keyed).encode()).hexdigest()[:16]


def partition_uri(spec: PipelineSpec, run_date: str) -> str:
    return storage.join(spec.output, f"run_date={run_date}")


def is_complete(info: dict | None) -> bool:
    return bool(info and info.get("status") == "finished" and not info.get("budget_stopped")
                and info.get("answered") == info.get("questions_total"))


def _questions(spec: PipelineSpec) -> list[Query]:
    if isinstance(spec.questions, str):
        return load_queries(spec.questions).queries
    if not isinstance(spec.questions, list) or not all(isinstance(q, dict) for q in spec.questions):
        raise UserError("pipeline spec: questions must be a file path or a list of mappings")
    rows = [{k: (None if v is None else str(v)) for k, v in q.items()} for q in spec.questions]
    names = list(dict.fromkeys(k for r in rows for k in r))
    table = pa.table({n: pa.array([r.get(n) for r in rows], type=pa.string()) for n in names})
    return queries_from_table(table, source="pipeline spec questions")


def input_hash(query: Query, corpus_hash: str) -> str:
    """What a question ran over: the corpus content, or its own text (the sha256 that
    `answers.context_sha256` records). A `context_file` is hashed streaming, never held;
    one that cannot be read counts as changed (its run then reports why)."""
    if query.scope_sha256 is not None:
        return query.scope_sha256   # a grid cell or scoped row: only its documents count
    ctx = query.text_context
    if ctx is None:
        return corpus_hash
    if ctx.uri is None:
        return hashlib.sha256(ctx.text.encode("utf-8", "surrogatepass")).hexdigest()
    digest = hashlib.sha256()
    try:
        fs, path = storage.filesystem(ctx.uri)
        with fs.open_input_stream(path) as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    except (OSError, pa.ArrowException):
        return "unreadable"
    return digest.hexdigest()


def _earlier_ok_answers(spec: PipelineSpec, run_date: str) -> set[tuple[str, str, str]]:
    """(query_id, question hash, input hash) of every ok answer of earlier dates: the
    input is the row's own text when it had one (its recorded context_sha256), else
    the corpus content. Dates answered under another output schema do not count."""
    schema = output_schema_of(spec)
    schema_sha = schema.sha256 if schema is not None else None
    seen: set[tuple[str, str, str]] = set()
    for entry in storage.list_prefix(spec.output):
        match = PARTITION.match(entry.relpath)
        if not match or match.group(1) >= run_date:
            continue
        uri = partition_uri(spec, match.group(1))
        info = read_run_info(uri) or {}
        if info.get("output_schema_sha256") != schema_sha:
            continue
        corpus_hash = info.get("corpus_content_hash")
        answers = read_run(uri, with_details=False).answers.to_pylist()
        for a in answers:
            if a["status"] == "ok":
                q = Query(a["query_id"], a["question"])
                seen.add((q.query_id, q.question_hash, a.get("scope_sha256")
                          or a.get("context_sha256") or str(corpus_hash)))
    return seen


def _context_columns(query: Query) -> dict:
    """A row's own context as the date's queries file carries it: the text, or the
    resolved (absolute or s3://) `context_file`, valid from the partition's folder."""
    ctx = query.text_context
    if ctx is None:
        return {}
    return {"context": ctx.text} if ctx.uri is None else {"context_file": ctx.uri}


def _scope_columns(query: Query) -> dict:
    columns = {"template_id": query.template_id, "scope": list(query.scope or ()) or None}
    return {k: v for k, v in columns.items() if v is not None}


def _write_queries(queries: list[Query], uri: str) -> None:
    lines = [json.dumps({"query_id": q.query_id, "question": q.question, "answer": q.expected,
                         **q.options, **_context_columns(q), **_scope_columns(q)},
                        sort_keys=True)
             for q in queries]
    storage.write_bytes_atomic(uri, ("\n".join(lines) + "\n").encode())


def _with_scopes(spec: PipelineSpec, questions: list[Query]) -> list[Query]:
    """The date's rows: a grid's cells (each with its scope's digest in today's corpus),
    or the spec's rows, scoped ones with their digest."""
    if spec.for_each is None and all(q.scope is None for q in questions):
        return questions
    from rlm_ray.batch.grid import build_grid, with_scope_digests
    from rlm_ray.corpus.scopes import doc_index

    index = doc_index(spec.corpus)
    if spec.for_each is not None:
        return build_grid(index, questions, spec.for_each).queries()
    return with_scope_digests(questions, index)


def rlm_from_spec(spec: PipelineSpec, partition: str) -> tuple[dict, Any, int]:
    """(RLM settings, in-process simulator to stop or None, concurrency)."""
    from rlm_ray.llm.config import GatewayConfig
    from rlm_ray.llm.options import cost_fields, entry_for
    from rlm_ray.sim import resolve_model
    from rlm_ray.sim.server import served_windows

    limits = spec.limits
    model, api_base, server = resolve_model(spec.model, spec.api_base,
                                            entry_for(spec.price_like, spec.model))
    sub_model = resolve_model(spec.sub_model, api_base or "unused")[0] if spec.sub_model else None
    # One cache for every date: an unchanged call made on Monday is free on Tuesday.
    cache = None if spec.cache == "off" else (spec.cache or storage.join(spec.output, "cache"))
    gateway = GatewayConfig(rpm=limits.get("rpm"), tpm=limits.get("tpm"), cache_uri=cache,
                            api_base=api_base, cache_mode="off" if cache is None else "auto",
                            context_windows=served_windows(server, model),
                            **cost_fields(vars(spec), model))
    rlm = {"model": model, "sub_model": sub_model, "api_base": api_base,
           "max_depth": int(limits.get("max_depth", 1)),
           "max_iterations": int(limits.get("max_iterations", 20)),
           "timeout_s": limits.get("timeout_s"), "budget_usd": limits.get("question_budget_usd"),
           "gateway": gateway, "output_schema": output_schema_of(spec),
           # the root model's input window (compaction); 0 turns compaction off
           **({"root_window": limits["root_window"]}
              if limits.get("root_window") is not None else {})}
    return rlm, server, int(limits.get("concurrency", 4))


@dataclass
class PipelineOutcome:
    run_date: str
    partition: str
    skipped_complete: bool
    selected: int
    total_questions: int
    summary: Any = None


def run_pipeline(spec: PipelineSpec, run_date: str, *, progress: bool = False,
                 rlm_override: dict | None = None, hosts: Any = None,
                 lease_wait_s: float = 0.0) -> PipelineOutcome:
    """One date. The date's partition is leased before anything else: a second
    fire of the same date while the first runs refuses (LeaseHeld, naming the
    holder) or, with `lease_wait_s`, waits and then finds the date complete.
    `hosts`: a batch.pool.HostPool kept by the caller across dates."""
    from rlm_ray.batch.lease import Lease

    partition = partition_uri(spec, run_date)
    if is_complete(read_run_info(partition)):
        return PipelineOutcome(run_date, partition, True, 0, 0)
    with Lease(partition).acquire(wait_s=lease_wait_s) as lease:
        if is_complete(read_run_info(partition)):   # finished while we waited
            return PipelineOutcome(run_date, partition, True, 0, 0)
        return _run_date(spec, run_date, partition, progress, rlm_override, hosts, lease)


def _run_date(spec: PipelineSpec, run_date: str, partition: str, progress: bool,
              rlm_override: dict | None, hosts: Any, lease: Any) -> PipelineOutcome:
    from rlm_ray.batch.runner import run
    from rlm_ray.corpus import ingest

    manifest = ingest(spec.sources, spec.corpus, chunk_tokens=spec.chunk_tokens,
                      exclude=spec.exclude, name=spec.name)
    corpus_hash = corpus_content_hash(manifest)
    questions = _with_scopes(spec, _questions(spec))
    if spec.rerun == "changed":
        done = _earlier_ok_answers(spec, run_date)
        selected = [q for q in questions
                    if (q.query_id, q.question_hash, input_hash(q, corpus_hash)) not in done]
    else:
        selected = questions
    rlm, server, concurrency = rlm_from_spec(spec, partition)
    rlm.update(rlm_override or {})
    queries_uri = storage.join(partition, "queries.jsonl")
    extra = {"pipeline": spec.name, "run_date": run_date, "rerun": spec.rerun,
             "corpus_content_hash": corpus_hash, "questions_in_spec": len(questions),
             **({"for_each": spec.for_each} if spec.for_each else {})}
    try:
        if selected:
            # Written once per date: a resumed date keeps its original selection.
            if not storage.exists(queries_uri):
                _write_queries(selected, queries_uri)
            summary = run(spec.corpus, queries_uri, partition, rlm=rlm, concurrency=concurrency,
                          progress=progress, budget_usd=spec.budget_usd, extra_info=extra,
                          hosts=hosts, lease=lease)
        else:
            from rlm_ray.batch.runner import record_empty_run

            summary = record_empty_run(partition, spec.corpus, extra, lease)
    finally:
        if server is not None:
            server.stop()
    return PipelineOutcome(run_date, partition, False, len(selected), len(questions), summary)
