"""`run(...)`: many questions over one corpus (or each over its own text
context, see queries.py), through a few RLM host actors.

The driver keeps `concurrency` questions in flight (driver.py; many per host
actor, pool.py), writes each finished question into the result tables (see tables.py
for why a crash loses at most the in-flight ones), and survives what a long
batch meets: a host or its node dying (see "Host loss" in driver.py), a question
failing driver-side (retried on a fresh REPL up to `max_attempts`, then a
dead-letter `error` row), a question hanging past its wall limit (its host is
retired), SIGTERM/Ctrl-C (flush, then exit). A run holds a lease on its results
folder (lease.py), so two drivers never answer the same folder's questions
twice. A rerun of the same command skips finished query ids; the gateway's
response cache (default `RESULTS/cache/`) makes replayed model calls free.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace

from rlm_ray.batch import rows, typed
from rlm_ray.batch.driver import BatchOptions, Driver, Interrupt
from rlm_ray.batch.lease import DEFAULT_TTL_S, Lease
from rlm_ray.batch.manifest import write_run_info
from rlm_ray.batch.pool import HostPool
from rlm_ray.batch.progress import Tally
from rlm_ray.batch.queries import Query, load_queries
from rlm_ray.batch.scoring import Accuracy, accuracy_of
from rlm_ray.batch.tables import finished_statuses, read_run
from rlm_ray.errors import UserError
from rlm_ray.text_context import DEFAULT_MAX_CONTEXT_BYTES

TERMINAL_OK = "ok"


@dataclass
class Summary:
    out_uri: str
    total: int
    skipped: int
    ran: int
    statuses: Counter           # over the whole answers table after this run
    llm_calls: int               # this run
    tokens: int                  # this run
    cost_usd: float              # this run
    wall_s: float
    accuracy: Accuracy | None    # recounted from the answers table
    interrupted: bool = False
    budget_stopped: bool = False
    plan: dict | None = None     # dry runs only
    retried_after_failure: int = 0
    host_loss_retries: int = 0   # retries of questions whose host died (no attempt counted)
    isolated: int = 0            # suspects run alone on a dedicated host
    peak_in_flight: int = 0      # most questions running at once
    answered_by_node: dict = field(default_factory=dict)   # Ray node id -> questions answered
    cost: dict = field(default_factory=dict)   # cached share, $ saved, dry-run estimate (batch/plan.py)

    @property
    def all_terminal(self) -> bool:
        return sum(self.statuses.values()) == self.total


def _select(queries: list[Query], statuses: dict[str, str], retry_failed: bool) -> list[Query]:
    def done(q: Query) -> bool:
        status = statuses.get(q.query_id)
        return status is not None and (status == TERMINAL_OK or not retry_failed)
    return [q for q in queries if not done(q)]


def _open_corpus(corpus_uri: str | None, queries: list[Query]):
    """The corpus handle, or None when every row brings its own text context."""
    if corpus_uri is None:
        bare = [q.query_id for q in queries if q.text_context is None]
        if bare:
            shown = ", ".join(bare[:5]) + (" ..." if len(bare) > 5 else "")
            raise UserError(f"{len(bare)} question(s) have no `context` or `context_file` "
                            f"and no CORPUS was given ({shown}): give a CORPUS, or a "
                            "context on every row")
        return None
    from rlm_ray.corpus import Corpus

    return Corpus.open(corpus_uri)


def run(corpus_uri: str | None, queries_path: str, out_uri: str, *, rlm: dict,
        concurrency: int = 4,
        retry_failed: bool = False, dry_run: bool = False, progress: bool = True,
        budget_usd: float | None = None, max_attempts: int = 3,
        calls_per_question: int = 10, extra_info: dict | None = None,
        hosts: HostPool | None = None, lease: Lease | None = None,
        lease_wait_s: float = 0.0, lease_ttl_s: float = DEFAULT_TTL_S,
        max_context_bytes: int = DEFAULT_MAX_CONTEXT_BYTES,
        for_each: str | None = None) -> Summary:
    """Answer every question of `queries_path` over the corpus into `out_uri`.
    Rows with their own `context`/`context_file` run over that text instead
    (each at most `max_context_bytes`); `corpus_uri` may be None when all do.

    `concurrency` is questions in flight, spread over `hosts` (a HostPool the
    caller keeps for several batches; by default one is started and stopped
    here). The run holds a lease on `out_uri` (or uses the caller's `lease`):
    another live driver on the same folder makes this one wait `lease_wait_s`
    and then refuse with LeaseHeld.

    `for_each` (a glob over the corpus's folders or documents) makes the file's
    rows templates of a grid (batch/grid.py): one row per template x match."""
    started = time.monotonic()
    query_file = load_queries(queries_path, max_context_bytes=max_context_bytes)
    if for_each is not None and corpus_uri is None:
        raise UserError("--for-each expands over a corpus's folders or documents: give a CORPUS")
    # Reads the manifest only: a wrong URI (or rows with no input at all) fails here.
    corpus = _open_corpus(corpus_uri, query_file.queries)
    grid = None
    if for_each is not None:
        from rlm_ray.batch.grid import build_grid
        from rlm_ray.corpus.scopes import doc_index

        grid = build_grid(doc_index(corpus), query_file.queries, for_each)
        extra_info = {**(extra_info or {}), "for_each": for_each}
    if dry_run and grid is not None:
        return _grid_plan(grid, corpus_uri, out_uri, rlm, retry_failed, calls_per_question,
                          concurrency, started)
    if grid is not None:
        query_file = replace(query_file, queries=grid.queries())
    elif corpus is not None and any(q.scope is not None for q in query_file.queries):
        from rlm_ray.batch.grid import with_scope_digests
        from rlm_ray.corpus.scopes import doc_index

        query_file = replace(query_file,
                             queries=with_scope_digests(query_file.queries, doc_index(corpus)))
    if dry_run:
        from rlm_ray.batch.plan import estimate

        statuses = finished_statuses(out_uri)
        typed.check_resume(out_uri, rlm.get("output_schema"), has_answers=bool(statuses))
        todo = _select(query_file.queries, statuses, retry_failed)
        total = len(query_file.queries)
        plan = estimate(todo, rlm, calls_per_question=calls_per_question,
                        total=total, concurrency=concurrency)
        own = sum(q.text_context is not None for q in query_file.queries)
        plan = {"corpus": corpus_uri or "none", "corpus_tokens": len(corpus) if corpus else 0,
                "rows_with_own_context": own, **plan}
        return Summary(out_uri, total, total - len(todo), 0, Counter(statuses.values()), 0, 0,
                       0.0, time.monotonic() - started, None, plan=plan)
    own_lease = lease is None
    lease = lease or Lease(out_uri, ttl_s=lease_ttl_s).acquire(wait_s=lease_wait_s)
    try:
        return _run_leased(corpus_uri, corpus, query_file, out_uri, rlm, concurrency,
                           retry_failed, progress, budget_usd, max_attempts, extra_info,
                           hosts, lease, started, calls_per_question)
    finally:
        if own_lease:
            lease.release()


def _grid_plan(grid, corpus_uri: str, out_uri: str, rlm: dict, retry_failed: bool,
               calls_per_question: int, concurrency: int, started: float) -> Summary:
    from rlm_ray.batch.grid import dry_run_plan
    from rlm_ray.batch.tables import latest_statuses

    answers = latest_statuses(out_uri)
    plan, todo = dry_run_plan(grid, answers, rlm, retry_failed=retry_failed,
                              calls_per_question=calls_per_question, concurrency=concurrency)
    return Summary(out_uri, grid.size, grid.size - todo, 0,
                   Counter(answers.column("status").to_pylist()), 0, 0, 0.0,
                   time.monotonic() - started, None, plan={"corpus": corpus_uri, **plan})


def _run_leased(corpus_uri, corpus, query_file, out_uri, rlm, concurrency, retry_failed,
                progress, budget_usd, max_attempts, extra_info, hosts, lease,
                started, calls_per_question) -> Summary:
    # Read what is finished only under the lease: a driver that held the folder
    # a moment ago has flushed everything it will ever write.
    statuses = finished_statuses(out_uri)
    typed.check_resume(out_uri, rlm.get("output_schema"), has_answers=bool(statuses))
    todo = _select(query_file.queries, statuses, retry_failed)
    total = len(query_file.queries)
    opts = BatchOptions(concurrency=max(1, concurrency), retry_failed=retry_failed,
                        max_attempts=max_attempts, budget_usd=budget_usd, progress=progress,
                        extra_info=extra_info or {})
    rlm = with_spend_cap(rlm, budget_usd)
    info = {"corpus_uri": corpus_uri,
            "corpus_name": corpus.manifest.get("name") if corpus is not None else None,
            "queries": query_file.path, "queries_sha256": query_file.sha256, "out": out_uri,
            "questions_total": total,
            "rlm": rlm, "concurrency": concurrency, "budget_usd": budget_usd,
            "lease": {"holder": lease.record.holder, "run_id": lease.record.run_id,
                      "generation": lease.record.generation} if lease.record else None,
            "started_at": rows.utc_now().isoformat(), "status": "running",
            **typed.record(rlm.get("output_schema")), **opts.extra_info}
    write_run_info(out_uri, info, lease)
    tally = Tally(total=total, skipped=total - len(todo))
    from rlm_ray.batch.plan import estimate

    estimated = estimate(todo, rlm, calls_per_question=calls_per_question, total=total,
                         concurrency=concurrency)["estimated_cost_usd"]
    interrupted = False
    own_hosts = hosts is None and bool(todo)
    if own_hosts:
        hosts = HostPool(concurrency=opts.concurrency)
    batch = Driver(corpus, todo, out_uri, rlm, opts, tally, hosts, lease) if todo else None
    try:
        with Interrupt():
            if batch:
                batch.drive()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if own_hosts:
            hosts.shutdown()
    lease.ensure_held()
    final = read_run(out_uri, with_details=False).answers
    final_statuses = Counter(final.column("status").to_pylist())
    summary = Summary(
        out_uri, total, tally.skipped, tally.done, final_statuses, tally.llm_calls,
        tally.tokens, tally.cost_usd, time.monotonic() - started, accuracy_of(final),
        interrupted=interrupted, budget_stopped=bool(batch and batch.budget_stopped),
        retried_after_failure=batch.retried if batch else 0,
        host_loss_retries=batch.host_loss_retries if batch else 0,
        isolated=batch.isolated if batch else 0,
        peak_in_flight=batch.peak_in_flight if batch else 0,
        answered_by_node=dict(hosts.answered_by_node) if batch else {},
        cost=tally.cost_figures(estimated))
    info.update(status="interrupted" if interrupted else "finished",
                finished_at=rows.utc_now().isoformat(), answered=final.num_rows,
                statuses=dict(final_statuses),
                # None, not 0, when no answer had a known price (an unknown price is not free)
                cost_usd_this_run=None if tally.unpriced and not tally.priced else tally.cost_usd,
                budget_stopped=summary.budget_stopped,
                answered_by_node=summary.answered_by_node, cost=summary.cost)
    write_run_info(out_uri, info, lease)  # the manifest is written last
    if interrupted:
        raise KeyboardInterrupt
    return summary


def with_spend_cap(rlm: dict, budget_usd: float | None) -> dict:
    """The batch's dollar budget as a Budget every model call of the batch draws from
    (reserved at the worst case, settled at the billed figure): it stops within one call."""
    if budget_usd is None:
        return rlm
    from rlm_ray._ray import ensure_ray
    from rlm_ray.llm.budget import Budget
    from rlm_ray.llm.config import GatewayConfig

    ensure_ray()   # the cap must live in the cluster's budget bank, not in this process
    gateway = rlm.get("gateway") or GatewayConfig()
    return {**rlm, "gateway": gateway.with_(spend_cap=Budget(usd=budget_usd))}


def record_empty_run(out_uri: str, corpus_uri: str, extra_info: dict,
                     lease: Lease | None = None) -> Summary:
    """A run with nothing to do still leaves its manifest (a pipeline date is then complete)."""
    now = rows.utc_now().isoformat()
    write_run_info(out_uri, {"corpus_uri": corpus_uri, "out": out_uri, "questions_total": 0,
                             "answered": 0, "status": "finished", "started_at": now,
                             "finished_at": now, "statuses": {}, **extra_info}, lease)
    return Summary(out_uri, 0, 0, 0, Counter(), 0, 0, 0.0, 0.0, None)
