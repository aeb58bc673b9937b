"""Model-driven corpus work out of the host process: query workers and their pool.

A host actor runs many questions; if their DuckDB queries ran in the host, one
query building a value of gigabytes (DuckDB's memory limit does not cover a
vector's strings, and no list of functions can name every way to amplify)
would kill the host and every question on it. So each call runs in a
`QueryWorker` (`query_worker.py`), a process whose data memory the kernel
caps (RLIMIT_DATA); a runaway query fails or dies there, the model reads
`query used more than N MB`, and the worker is replaced.

Pooling: one small pool per corpus per host (`QueryLimits.workers`, default 2),
not a worker per question: a question waits on models most of the time and a
host holds up to hundreds of them, so per-question workers would cost ~145 MB
each (measured warm on the stdlib) for processes that sit idle. Fairness between the questions sharing a
pool: a question has at most one call in flight (`QuerySession`), and callers
take workers in arrival order, so a question running a long legal query holds
one worker while the others keep being served.

Every call ends by its deadline: the worker interrupts DuckDB a little before
it, and the host kills the worker at it if the interrupt was not honoured.
Replies are capped in bytes (`QueryLimits.result_mb`), checked by the worker
and again by the host's frame reader before it allocates a reply.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import asdict, dataclass, replace
from typing import Any

from rlm_ray.corpus.query_frames import FrameError, FrameReader, FrameTimeout, WorkerGone, write_frame
from rlm_ray.corpus.sql_gate import CorpusQueryError
from rlm_ray.errors import UserError

KILL_GRACE_S = 1.0        # the worker interrupts DuckDB this long before the deadline (at most)
START_TIMEOUT_S = 60.0    # a worker's start-up (imports, corpus opened), when no deadline is nearer
FRAME_SLACK_BYTES = 1 << 20
MEMORY_SIGNALS = (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS)
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class QueryLimits:
    """Bounds of the query workers of one corpus on one host."""
    workers: int = 2           # processes at most (started on demand, retired when idle)
    memory_mb: int = 1024      # kernel cap on each worker's data memory (RLIMIT_DATA)
    result_mb: int = 16        # bytes one call may return (the sandbox's value cap)
    idle_s: float = 120.0      # an idle worker ends after this long
    # Each worker holds a corpus up to this size in memory (duck.DuckLimits.resident_mb):
    # scans at memory speed, for workers x this much RAM per host at most.
    resident_mb: int = 64

    @property
    def result_bytes(self) -> int:
        return self.result_mb << 20

    @classmethod
    def from_env(cls) -> QueryLimits:
        def number(name: str, default: int, minimum: int) -> int:
            raw = os.environ.get(name, "").strip()
            if not raw:
                return default
            if not raw.isdigit() or int(raw) < minimum:
                raise UserError(f"{name} must be a whole number >= {minimum}, got {raw!r}")
            return int(raw)
        return cls(workers=number("RLM_RAY_QUERY_WORKERS", cls.workers, 1),
                   memory_mb=number("RLM_RAY_QUERY_MEMORY_MB", cls.memory_mb, 256),
                   result_mb=number("RLM_RAY_QUERY_RESULT_MB", cls.result_mb, 1),
                   resident_mb=number("RLM_RAY_QUERY_RESIDENT_MB", cls.resident_mb, 0))


def worker_env() -> dict[str, str]:
    """The host's environment (S3 settings and credentials included: the worker
    reads the corpus) minus model-provider keys, which no query needs; the
    package on the path so the worker runs this very code."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, env.get("PYTHONPATH")) if p)
    return env


def memory_message(memory_mb: int, detail: str = "") -> str:
    return (f"query used more than {memory_mb} MB of memory{detail} and was stopped. "
            f"Aggregate in SQL, or select fewer or shorter values")


class QueryWorker:
    """One worker process, used by one caller at a time."""

    def __init__(self, opening: dict[str, Any], limits: QueryLimits) -> None:
        self.limits = limits
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlm_ray.corpus.query_worker", str(limits.memory_mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=worker_env(), close_fds=True)
        self.pid = self.proc.pid
        self._reader = FrameReader(self.proc.stdout.fileno(), limits.result_bytes + FRAME_SLACK_BYTES)
        self._ready = False
        self.idle_since = time.monotonic()
        try:
            write_frame(self.proc.stdin.fileno(), opening)
        except WorkerGone:
            pass    # died at start: the first call reports it

    def call(self, request: dict[str, Any], deadline: float) -> tuple[dict[str, Any], bytes]:
        if not self._ready:
            ready, _ = self._reader.read(min(deadline, time.monotonic() + START_TIMEOUT_S))
            if not ready.get("ready"):
                raise FrameError(f"unexpected first frame from a query worker: {ready!r:.200}")
            self._ready = True
        write_frame(self.proc.stdin.fileno(), request)
        return self._reader.read(deadline)

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            return False
        try:    # killed but not reapable yet: its threads are still exiting
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                return f.read().rsplit(b") ", 1)[1][:1] not in (b"Z", b"X")
        except (OSError, IndexError):
            return True     # no /proc: poll() alone

    def stop(self, kill: bool) -> int:
        """End the process (at once, or by closing its stdin), reap it, remove
        its spill folder; its exit status."""
        from rlm_ray.corpus.duck import spill_dir

        if kill and self.proc.poll() is None:
            self.proc.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        shutil.rmtree(spill_dir(self.pid), ignore_errors=True)
        return code


class QueryPool:
    """The query workers of one corpus in this process."""

    def __init__(self, uri: str, manifest: dict, duck_limits, limits: QueryLimits | None = None) -> None:
        self.limits = limits or QueryLimits.from_env()
        # DuckDB's own limit stays the first line, under the kernel's cap: a
        # clean "memory limit" error where DuckDB accounts for the memory.
        duck = replace(duck_limits, memory_mb=min(duck_limits.memory_mb, self.limits.memory_mb // 2),
                       resident_mb=min(self.limits.resident_mb, self.limits.memory_mb // 4))
        self._opening = {"uri": uri, "manifest": manifest, "limits": asdict(duck)}
        self._cond = threading.Condition()
        self._idle: list[QueryWorker] = []
        self._busy: set[QueryWorker] = set()
        self._starting = 0
        self._waiting: deque[int] = deque()
        self._tickets = 0
        self._reaper: threading.Thread | None = None
        self._closed = False
        self.replaced = 0       # workers lost to a memory failure, a timeout or a crash
        _POOLS.add(self)

    # -- taking and returning workers --------------------------------------------
    def _acquire(self, deadline: float) -> QueryWorker:
        dead: list[QueryWorker] = []
        try:
            return self._take(deadline, dead)
        finally:
            for worker in dead:
                worker.stop(kill=True)

    def _take(self, deadline: float, dead: list[QueryWorker]) -> QueryWorker:
        with self._cond:
            self._tickets += 1
            ticket = self._tickets
            self._waiting.append(ticket)
            try:
                while True:
                    if self._closed:
                        raise CorpusQueryError("the corpus's query workers are closed")
                    if self._waiting[0] == ticket:
                        while self._idle and not self._idle[-1].alive():
                            dead.append(self._idle.pop())   # died while idle (OOM killer, ...)
                        if self._idle:
                            worker = self._idle.pop()
                            self._busy.add(worker)
                            return worker
                        if len(self._busy) + self._starting < self.limits.workers:
                            self._starting += 1
                            break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise CorpusQueryError("query exceeded its time limit waiting for a free "
                                               "query worker (other questions' queries hold them)")
                    self._cond.wait(remaining)
            finally:
                self._waiting.remove(ticket)
                self._cond.notify_all()
        try:
            worker = QueryWorker(self._opening, self.limits)
        except BaseException:
            with self._cond:
                self._starting -= 1
                self._cond.notify_all()
            raise
        with self._cond:
            self._starting -= 1
            self._busy.add(worker)
        self._start_reaper()
        return worker

    def _release(self, worker: QueryWorker, healthy: bool) -> None:
        with self._cond:
            self._busy.discard(worker)
            keep = healthy and not self._closed
            if keep:
                worker.idle_since = time.monotonic()
                self._idle.append(worker)
            else:
                self.replaced += not self._closed
            self._cond.notify_all()
        if not keep:
            worker.stop(kill=True)

    # -- one call ------------------------------------------------------------------
    def call(self, method: str, args: dict[str, Any], timeout_s: float) -> tuple[dict[str, Any], bytes]:
        """(reply, payload) of `method` run by a worker, ended by `timeout_s`."""
        if timeout_s <= 0:
            raise CorpusQueryError("query exceeded its time limit (no time left in this block)")
        deadline = time.monotonic() + timeout_s
        worker = self._acquire(deadline)
        healthy = False
        try:
            remaining = deadline - time.monotonic()
            request = {"method": method, "args": args, "max_bytes": self.limits.result_bytes,
                       "timeout_s": max(0.001, remaining - min(KILL_GRACE_S, remaining / 4))}
            try:
                reply, payload = worker.call(request, deadline)
            except FrameTimeout:
                raise CorpusQueryError(f"query exceeded its time limit ({timeout_s:.1f}s); its "
                                       f"worker process was stopped") from None
            except FrameError as exc:
                raise CorpusQueryError(f"the query worker sent an invalid reply ({exc}); it was "
                                       f"replaced") from None
            except WorkerGone:
                raise CorpusQueryError(self._death(worker)) from None
            healthy = reply.get("limit") != "process"     # that worker exits by itself
            if reply.get("kind") == "memory":
                duckdb_limit = reply.get("limit") == "duckdb"     # DuckDB's own, the first line
                raise CorpusQueryError(memory_message(
                    self._opening["limits"]["memory_mb"] if duckdb_limit else self.limits.memory_mb,
                    " (DuckDB's limit)" if duckdb_limit else ""))
            if "error" in reply:
                raise CorpusQueryError(str(reply["error"]))
            return reply, payload
        finally:
            self._release(worker, healthy)

    def _death(self, worker: QueryWorker) -> str:
        code = worker.stop(kill=True)
        if code < 0 and -code in MEMORY_SIGNALS:
            return memory_message(self.limits.memory_mb,
                                  f" or crashed its worker ({signal.Signals(-code).name})")
        return f"the query worker exited unexpectedly (status {code}); it was replaced"

    # -- lifetime --------------------------------------------------------------------
    def in_use(self) -> int:
        """Workers running a call now."""
        with self._cond:
            return len(self._busy)

    def worker_pids(self) -> list[int]:
        with self._cond:
            return sorted(w.pid for w in [*self._idle, *self._busy])

    def _start_reaper(self) -> None:
        with self._cond:
            if self._reaper is not None:
                return
            self._reaper = threading.Thread(target=self._reap_idle, name="query-worker-reaper",
                                            daemon=True)
            self._reaper.start()

    def _reap_idle(self) -> None:
        """Ends workers idle for `idle_s`; exits once the pool has none."""
        while True:
            time.sleep(min(self.limits.idle_s / 4, 30.0))
            with self._cond:
                now = time.monotonic()
                stale = [w for w in self._idle if now - w.idle_since >= self.limits.idle_s]
                self._idle = [w for w in self._idle if w not in stale]
                done = self._closed or not (self._idle or self._busy or self._starting)
                if done:    # decided under the lock: a worker started later starts a new reaper
                    self._reaper = None
            for worker in stale:
                worker.stop(kill=False)
            if done:
                return

    def close(self) -> None:
        """End every idle worker now; a busy one ends when its call returns."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for worker in idle:
            worker.stop(kill=False)


class QuerySession:
    """One question's use of a pool: its calls run one at a time (the fairness
    rule), each under the caller's deadline."""

    def __init__(self, pool: QueryPool, scope: tuple[str, ...] = ()) -> None:
        self.pool = pool
        # Path globs every call of this question is confined to (corpus/scoped.py); (): all.
        self.scope = tuple(scope)
        self._lock = threading.Lock()

    def _call(self, method: str, args: dict[str, Any], timeout_s: float) -> tuple[dict[str, Any], bytes]:
        started = time.monotonic()
        if timeout_s <= 0 or not self._lock.acquire(timeout=timeout_s):
            raise CorpusQueryError("query exceeded its time limit (this question's previous "
                                   "corpus call is still running)")
        if self.scope:
            args = {**args, "scope": list(self.scope)}
        try:
            return self.pool.call(method, args, timeout_s - (time.monotonic() - started))
        finally:
            self._lock.release()

    def sql(self, query: str, limit: int | None, timeout_s: float):
        """(Arrow table, cut short by the byte cap?) of one model SELECT."""
        reply, payload = self._call("sql", {"query": query, "limit": limit}, timeout_s)
        return _table(payload), bool(reply["truncated"])

    def table(self, query: str, params: list, timeout_s: float):
        """All rows of a host-written query (ours, over the corpus's files)."""
        return _table(self._call("table", {"query": query, "params": params}, timeout_s)[1])

    def grep(self, pattern: str, limit: int | None, regex: bool, case: bool, timeout_s: float) -> list[dict]:
        args = {"pattern": pattern, "limit": limit, "regex": regex, "case": case}
        return self._call("grep", args, timeout_s)[0]["value"]

    def read(self, doc: Any, start: int, end: int | None, max_chars: int, timeout_s: float) -> tuple[str, int]:
        """(text, at most `max_chars` of it; the full text's length)."""
        args = {"doc": doc, "start": start, "end": end, "max_chars": max_chars}
        value = self._call("read", args, timeout_s)[0]["value"]
        return value["text"], int(value["chars"])

    def docs(self, limit: int | None, timeout_s: float) -> list[dict]:
        return self._call("docs", {"limit": limit}, timeout_s)[0]["value"]

    def scope_counts(self, timeout_s: float) -> dict:
        """documents, tokens, chunks, bytes, characters of this session's scope, and
        `whole` when it covers the corpus; an empty scope raises."""
        return self._call("scope", {}, timeout_s)[0]["value"]


def _table(payload: bytes):
    import pyarrow as pa

    try:
        table = pa.ipc.open_stream(payload).read_all()
        table.validate(full=True)     # offsets and lengths checked before any value is read
    except (pa.ArrowException, ValueError) as exc:
        raise CorpusQueryError(f"the query worker sent an invalid table ({exc})") from None
    return table


_POOLS: weakref.WeakSet[QueryPool] = weakref.WeakSet()


@atexit.register
def close_all() -> None:
    """Close every pool this process opened (at exit, or when a long-lived caller
    such as a test session wants its workers gone now)."""
    for pool in list(_POOLS):
        pool.close()
