"""The loop that keeps a batch's questions in flight: launch up to
`concurrency` on the host pool (pool.py), collect what finished into the
table writer, retry what failed, and stop at the batch's dollar budget.

A question failing driver-side is retried on a fresh REPL up to
`max_attempts`, then becomes a dead-letter `error` row; one hanging past its
wall limit has its host retired.

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
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rlm_ray.batch import rows
from rlm_ray.batch.lease import Lease
from rlm_ray.batch.pool import HostPool
from rlm_ray.batch.progress import Progress, Tally
from rlm_ray.batch.queries import Query
from rlm_ray.batch.tables import FinishedQuestion, TableWriter

log = logging.getLogger(__name__)

SUSPECT_AFTER_LOSSES = 2   # host deaths a question was in flight at before it runs alone


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


def _hard_deadline(spec: dict) -> float | None:
    # The engine enforces timeout_s itself; this is the backstop for a stuck actor.
    timeout = spec.get("timeout_s")
    return None if not timeout else time.monotonic() + 1.5 * float(timeout) + 30


class Interrupt:
    """Turn SIGTERM (ray job stop, a scheduler's kill) into KeyboardInterrupt,
    so the same flush-and-exit path handles both."""

    def __enter__(self) -> "Interrupt":
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


class Driver:
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
                                                     or cap_refused(self.rlm)):
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


def cap_refused(rlm: dict) -> bool:
    cap = getattr(rlm.get("gateway"), "spend_cap", None)
    return cap is not None and cap.snapshot().get("refusals", 0) > 0
