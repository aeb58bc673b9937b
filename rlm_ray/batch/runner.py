"""`run(...)`: many questions over one corpus (or each over its own text
context, see queries.py), through a few RLM host actors.

The driver keeps `concurrency` questions in flight (many per host actor, see
pool.py), writes each finished question into the result tables (see tables.py
for why a crash loses at most the in-flight ones), and survives what a long
batch meets: a host or its node dying (see "Host loss" below), a question
failing driver-side (retried on a fresh REPL up to `max_attempts`, then a
dead-letter `error` row), a question hanging past its wall limit (its host is
retired), SIGTERM/Ctrl-C (flush, then exit). A run holds a lease on its results
folder (lease.py), so two drivers never answer the same folder's questions
twice. A rerun of the same command skips finished query ids; the gateway's
response cache (default `RESULTS/cache/`) makes replayed model calls free.

Host loss. A host carries up to HOST_QUESTIONS questions, so its death says
little about any one of them: every question in flight on it is retried
without counting an attempt (its finished model calls were cached before they
returned, so the retry replays them for free; only a call cut off by the death
is sent again). A question in flight at SUSPECT_AFTER_LOSSES host deaths is a
suspect: it runs alone on a dedicated host (pool.py), and if that host dies too
it is dead-lettered alone. So a host-killing question costs its neighbours at
most two retries and no attempt, and no question can loop forever.
"""
from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Any

from rlm_ray.batch import rows, typed
from rlm_ray.batch.lease import DEFAULT_TTL_S, Lease
from rlm_ray.batch.manifest import write_run_info
from rlm_ray.batch.pool import HostPool
from rlm_ray.batch.progress import Progress, Tally
from rlm_ray.batch.queries import Query, load_queries
from rlm_ray.batch.scoring import Accuracy, accuracy_of
from rlm_ray.batch.tables import FinishedQuestion, TableWriter, finished_statuses, read_run
from rlm_ray.errors import UserError
from rlm_ray.text_context import DEFAULT_MAX_CONTEXT_BYTES

log = logging.getLogger(__name__)

TERMINAL_OK = "ok"
SUSPECT_AFTER_LOSSES = 2   # host deaths a question was in flight at before it runs alone


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


@dataclass
class _Job:
    """A question waiting or running, with what its failures so far cost it."""

    query: Query
    attempt: int = 1           # counted attempts: driver-side errors and timeouts
    host_losses: int = 0       # host deaths it was in flight at (never counted as attempts)
    isolated: bool = False     # a suspect: runs alone on a dedicated host


@dataclass
class _InFlight:
    job: _Job
    host: Any
    started_at: dt.datetime
    deadline: float | None

    @property
    def query(self) -> Query:
        return self.job.query


@dataclass
class BatchOptions:
    concurrency: int = 4             # questions in flight (not processes)
    retry_failed: bool = False
    max_attempts: int = 3            # per question, across host deaths and driver-side errors
    budget_usd: float | None = None  # whole batch: stop starting questions past it
    flush_every: int = 8
    flush_s: float = 5.0
    progress: bool = True
    extra_info: dict = field(default_factory=dict)   # recorded in run.json (e.g. pipeline keys)


def _select(queries: list[Query], statuses: dict[str, str], retry_failed: bool) -> list[Query]:
    def done(q: Query) -> bool:
        status = statuses.get(q.query_id)
        return status is not None and (status == TERMINAL_OK or not retry_failed)
    return [q for q in queries if not done(q)]


def _hard_deadline(spec: dict) -> float | None:
    # The engine enforces timeout_s itself; this is the backstop for a stuck actor.
    timeout = spec.get("timeout_s")
    return None if not timeout else time.monotonic() + 1.5 * float(timeout) + 30


class _Interrupt:
    """Turn SIGTERM (ray job stop, a scheduler's kill) into KeyboardInterrupt,
    so the same flush-and-exit path handles both."""

    def __enter__(self) -> "_Interrupt":
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame) -> None:
        raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class _Batch:
    def __init__(self, corpus, todo: list[Query], out_uri: str, rlm: dict,
                 opts: BatchOptions, tally: Tally, hosts: HostPool, lease: Lease) -> None:
        import ray

        self.corpus = ray.put(corpus)   # one copy in the object store, not one per question
        hosts.warm(self.corpus, rlm)    # start-up paid once, before the first wave
        self.queue: deque[_Job] = deque(_Job(q) for q in todo)
        self.suspects: deque[_Job] = deque()   # wait for a free dedicated host
        self.rlm = rlm
        self.model = rlm.get("model")
        self.opts = opts
        self.tally = tally
        self.writer = TableWriter(out_uri, opts.flush_every, opts.flush_s,
                                  generation=lease.generation,
                                  output_schema=rlm.get("output_schema"))
        self.hosts = hosts
        self.lease = lease
        self.in_flight: dict[Any, _InFlight] = {}
        self.budget_stopped = False
        self.retried = 0
        self.host_loss_retries = 0
        self.isolated = 0
        self.peak_in_flight = 0

    def pending(self) -> bool:
        return bool(self.queue or self.suspects or self.in_flight)

    def _next(self) -> tuple[_Job, Any] | None:
        """The next job and its host: a suspect when a dedicated host is free, else the queue."""
        if self.suspects:
            host = self.hosts.dedicated_host()
            if host is not None:
                return self.suspects.popleft(), host
        if self.queue:
            return self.queue.popleft(), self.hosts.pick()
        return None

    def _launch(self) -> None:
        while (self.queue or self.suspects) and len(self.in_flight) < self.opts.concurrency:
            if self.opts.budget_usd is not None and (self.tally.cost_usd >= self.opts.budget_usd
                                                     or _cap_refused(self.rlm)):
                self.budget_stopped = True
                return
            picked = self._next()
            if picked is None:
                break
            job, host = picked
            spec = {**self.rlm, **job.query.options}
            # A row's own text goes as a small reference (or its inline text), read on the host.
            query = job.query
            context = self.corpus if query.text_context is None else query.text_context
            ref = self.hosts.submit(host, context, query, spec)
            self.in_flight[ref] = _InFlight(job, host, rows.utc_now(), _hard_deadline(spec))
        self.peak_in_flight = max(self.peak_in_flight, len(self.in_flight))

    def _finish(self, finished: FinishedQuestion) -> None:
        self.writer.add(finished)
        self.tally.record(finished.answer)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        self.lease.ensure_held()   # never write after another driver may have taken over
        self.writer.maybe_flush()

    def _failed(self, running: _InFlight, error: str, status: str = "error") -> None:
        """The call broke or hung: retry on a fresh REPL, or dead-letter."""
        job = running.job
        if job.attempt < self.opts.max_attempts:
            self.retried += 1
            log.warning("query %s attempt %d failed (%s); retrying", job.query.query_id,
                        job.attempt, error)
            job.attempt += 1
            (self.suspects if job.isolated else self.queue).appendleft(job)
        else:
            self._dead_letter(running, f"after {job.attempt} attempts: {error}", status)

    def _host_lost(self, running: _InFlight, error: str) -> None:
        """The question's host died under it: not its fault until shown otherwise
        (see the module docstring), so no attempt is counted."""
        job = running.job
        job.host_losses += 1
        if job.isolated:
            self._dead_letter(running, f"killed its host {job.host_losses} times, the last time "
                                       f"running alone on a dedicated host: {error}")
            return
        self.host_loss_retries += 1
        if job.host_losses >= SUSPECT_AFTER_LOSSES:
            log.warning("query %s was in flight at %d host deaths; running it alone",
                        job.query.query_id, job.host_losses)
            job.isolated = True
            self.isolated += 1
            self.suspects.append(job)
        else:
            self.queue.appendleft(job)

    def _dead_letter(self, running: _InFlight, error: str, status: str = "error") -> None:
        job = running.job
        self._finish(rows.dead_letter(job.query, error, running.started_at, self.model, status,
                                      attempts=job.attempt, host_losses=job.host_losses))

    def _collect(self, timeout_s: float) -> None:
        import ray

        refs = list(self.in_flight)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout_s)
        if ready:   # take everything already done, not one per wait
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            job = self.in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:  # noqa: BLE001  (host death, node loss, engine bug)
                host_lost = self.hosts.is_host_loss(exc)
                self.hosts.failed(job.host, ref, host_lost=host_lost)
                if host_lost:
                    self._host_lost(job, self.hosts.describe_error(exc))
                else:
                    self._failed(job, self.hosts.describe_error(exc))
                continue
            self.hosts.finished(job.host, ref)
            self._finish(rows.from_result(job.query, result, job.started_at, self.model,
                                          attempts=job.job.attempt,
                                          host_losses=job.job.host_losses))
        now = time.monotonic()
        for ref, job in list(self.in_flight.items()):
            if job.deadline is not None and now > job.deadline:
                del self.in_flight[ref]
                self.hosts.failed(job.host, ref, host_lost=False, stuck=True)
                self._failed(job, "exceeded the question's wall-time limit; its host was retired",
                             status="timeout")

    def drive(self) -> None:
        progress = Progress(self.tally, enabled=self.opts.progress)
        try:
            while self.pending():
                self.lease.ensure_held()
                self._launch()
                if not self.in_flight:
                    break  # budget reached with nothing running
                self.tally.in_flight = len(self.in_flight)
                self._collect(timeout_s=1.0)
                self.tally.in_flight = len(self.in_flight)
                progress.update()
                self._maybe_flush()
        finally:
            # Interrupted or not: everything that finished reaches the tables,
            # unless the folder now belongs to another driver.
            if not self.lease.lost_reason():
                self.writer.flush()
            progress.close()
            for ref, job in self.in_flight.items():   # abandoned loops: retire their hosts
                self.hosts.failed(job.host, ref, host_lost=False, stuck=True)


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
    rlm = _with_spend_cap(rlm, budget_usd)
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
    batch = _Batch(corpus, todo, out_uri, rlm, opts, tally, hosts, lease) if todo else None
    try:
        with _Interrupt():
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


def _with_spend_cap(rlm: dict, budget_usd: float | None) -> dict:
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


def _cap_refused(rlm: dict) -> bool:
    cap = getattr(rlm.get("gateway"), "spend_cap", None)
    return cap is not None and cap.snapshot().get("refusals", 0) > 0


def record_empty_run(out_uri: str, corpus_uri: str, extra_info: dict,
                     lease: Lease | None = None) -> Summary:
    """A run with nothing to do still leaves its manifest (a pipeline date is then complete)."""
    now = rows.utc_now().isoformat()
    write_run_info(out_uri, {"corpus_uri": corpus_uri, "out": out_uri, "questions_total": 0,
                             "answered": 0, "status": "finished", "started_at": now,
                             "finished_at": now, "statuses": {}, **extra_info}, lease)
    return Summary(out_uri, 0, 0, 0, Counter(), 0, 0, 0.0, 0.0, None)
