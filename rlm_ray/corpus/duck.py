"""DuckDB connections over a corpus, confined and bounded.

Model-written SQL runs here, so each connection is locked down before any
query: views over the exact shard files, `allowed_paths` = those files and
the docs table only, `enable_external_access=false`, no extension
auto-install/-load, an explicit memory limit, thread count and spill cap
(`DuckLimits`), then `lock_configuration=true` so nothing can be switched
back. In front of that, `sql_gate` admits only an allow-listed SELECT, and
`bounded` interrupts any statement at its caller's deadline.

S3 goes through the httpfs build that ships on PyPI for DuckDB 1.4.4
(`duckdb-ext-httpfs`): DuckDB cannot download extensions offline.
"""
from __future__ import annotations

import importlib.util
import itertools
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb

from rlm_ray import storage
from rlm_ray.corpus.sql_gate import CorpusQueryError
from rlm_ray.errors import UserError


class CorpusMemoryError(CorpusQueryError):
    """A query ran out of the memory it may use: DuckDB's limit, or (`by_process`)
    an allocation the process's own cap refused."""

    by_process: bool = False


@dataclass(frozen=True)
class DuckLimits:
    """Per-database bounds: DuckDB's default memory limit is most of the machine."""
    memory_mb: int = 1024
    temp_mb: int = 1024        # spill to disk at most this much (0: never spill)
    threads: int = 2
    # Hold the chunks in memory (decompressed) when the corpus is at most this
    # big: a full scan (a model's regex over every chunk) then skips reading
    # and decompressing the shards, about half its CPU. 0: always read them.
    resident_mb: int = 0

    @property
    def max_value_size(self) -> int:
        """Largest value an amplifying function may build (characters or list items):
        a full vector (2048 rows) of them stays within a quarter of the memory limit."""
        return max(4096, self.memory_mb * 2**20 // (4 * 2048))

    @classmethod
    def from_env(cls) -> DuckLimits:
        def number(name: str, default: int) -> int:
            raw = os.environ.get(name, "").strip()
            if not raw:
                return default
            if not raw.isdigit():
                raise UserError(f"{name} must be a whole number, got {raw!r}")
            return int(raw)
        return cls(memory_mb=number("RLM_RAY_DUCKDB_MEMORY_MB", cls.memory_mb),
                   temp_mb=number("RLM_RAY_DUCKDB_TEMP_MB", cls.temp_mb),
                   threads=max(1, number("RLM_RAY_DUCKDB_THREADS", min(cls.threads, os.cpu_count() or 1))))


def spill_dir(pid: int) -> str:
    """Where the DuckDB of process `pid` spills (removed by whoever reaps a killed worker)."""
    return os.path.join(tempfile.gettempdir(), f"rlm-ray-duckdb-{pid}")


def _extension_dir() -> str:
    spec = importlib.util.find_spec("duckdb_ext")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the duckdb-ext-httpfs package is missing; reinstall rlm-ray (`make bootstrap`)")
    # duckdb_ext is a namespace package: its __file__ is None, the search path is not.
    return os.path.join(list(spec.submodule_search_locations)[0], "extensions")


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _s3_secret_sql() -> str:
    s3 = storage.S3Settings.from_env()
    parts = [("TYPE", "s3"), ("REGION", _sql_str(s3.region)), ("URL_STYLE", "'path'")]
    if s3.access_key:
        parts += [("KEY_ID", _sql_str(s3.access_key)), ("SECRET", _sql_str(s3.secret_key or ""))]
    if s3.session_token:
        parts.append(("SESSION_TOKEN", _sql_str(s3.session_token)))
    if s3.endpoint:
        parts += [("ENDPOINT", _sql_str(s3.endpoint)), ("USE_SSL", "true" if s3.scheme == "https" else "false")]
    return "CREATE OR REPLACE SECRET corpus_s3 (" + ", ".join(f"{k} {v}" for k, v in parts) + ")"


def _create_s3_secret(con: duckdb.DuckDBPyConnection) -> None:
    s3 = storage.S3Settings.from_env()
    try:
        con.execute(_s3_secret_sql())
    except duckdb.Error as exc:
        # DuckDB echoes the statement in some errors: never let the keys through.
        message = str(exc).splitlines()[0]
        for value in (s3.access_key, s3.secret_key, s3.session_token):
            if value:
                message = message.replace(value, "***")
        raise UserError(f"cannot configure S3 access for DuckDB: {message}") from None


def connect(root: str, shard_uris: Sequence[str], docs_uri: str,
            limits: DuckLimits | None = None, corpus_bytes: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory database whose only reachable files are the corpus's;
    `chunks` is a table held in memory when `corpus_bytes` fits the limits'
    `resident_mb`, a view over the shards otherwise."""
    limits = limits or DuckLimits.from_env()
    resident = corpus_bytes is not None and corpus_bytes <= limits.resident_mb << 20
    con = duckdb.connect(":memory:", config={
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "extension_directory": _extension_dir(),
        "memory_limit": f"{limits.memory_mb}MB",
        # A scan of resident chunks gains no wall time from a second thread,
        # only ~60% more CPU (measured: 35 vs 59 ms over 12 MB); shards read
        # from files do gain (63 -> 30 ms wall).
        "threads": 1 if resident else limits.threads,
        # Spill files go to a private directory (not a `.tmp` in whatever the
        # cwd is), capped; with no cap allowed, nothing spills at all.
        "temp_directory": spill_dir(os.getpid()) if limits.temp_mb else "",
        "max_temp_directory_size": f"{limits.temp_mb}MB",
    })
    if storage.is_s3(root):
        con.execute("LOAD httpfs")
        _create_s3_secret(con)
        # Repeated scans of the same shards are served from memory.
        con.execute("SET enable_external_file_cache = true")
        con.execute("SET enable_http_metadata_cache = true")
    con.execute("SET parquet_metadata_cache = true")
    con.execute(f"CREATE {'TABLE' if resident else 'VIEW'} chunks AS "
                f"SELECT * FROM read_parquet([{', '.join(map(_sql_str, shard_uris))}])")
    con.execute(f"CREATE VIEW docs AS SELECT * EXCLUDE (shard) FROM read_parquet({_sql_str(docs_uri)})")
    # Exactly the corpus's data files: not even its manifest or a neighbour object.
    readable = [u if storage.is_s3(u) else os.path.realpath(u) for u in [*shard_uris, docs_uri]]
    con.execute(f"SET allowed_paths = [{', '.join(map(_sql_str, readable))}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


class _Interrupter:
    """One thread per process that interrupts cursors at their deadlines. A
    `threading.Timer` per statement cost a thread start and stop (~90 us of
    CPU) for every query, most of which finish in milliseconds. The thread
    sleeps until the earliest deadline it knows of; a statement that ends
    first just leaves, and the thread, waking at that stale time, looks again."""

    def __init__(self) -> None:
        self._due: dict[int, tuple[float, duckdb.DuckDBPyConnection]] = {}
        self._changed = threading.Condition()
        self._wakes_at = float("inf")
        self._thread: threading.Thread | None = None
        self._tokens = itertools.count()

    def add(self, cur: duckdb.DuckDBPyConnection, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            token = next(self._tokens)
            self._due[token] = (deadline, cur)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="duckdb-deadlines",
                                                daemon=True)
                self._thread.start()
            elif deadline < self._wakes_at:
                self._changed.notify()
        return token

    def remove(self, token: int) -> None:
        with self._changed:
            self._due.pop(token, None)

    def _run(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                for token, (deadline, cur) in list(self._due.items()):
                    if deadline <= now:
                        del self._due[token]
                        try:
                            cur.interrupt()
                        except duckdb.Error:   # closed meanwhile: nothing left to stop
                            pass
                self._wakes_at = min((d for d, _ in self._due.values()), default=float("inf"))
                self._changed.wait(None if self._wakes_at == float("inf") else self._wakes_at - now)


_interrupter = _Interrupter()


@contextmanager
def bounded(cur: duckdb.DuckDBPyConnection, timeout_s: float | None) -> Iterator[None]:
    """Run the body's statements on `cur` under a deadline: DuckDB is
    interrupted at `timeout_s`, and the caller gets a clear error."""
    if timeout_s is not None and timeout_s <= 0:
        raise CorpusQueryError("query exceeded its time limit (no time left in this block)")
    token = _interrupter.add(cur, timeout_s) if timeout_s is not None else None
    try:
        yield
    except duckdb.InterruptException:
        limit = f" ({timeout_s:.1f}s)" if timeout_s is not None else ""
        raise CorpusQueryError(f"query exceeded its time limit{limit}") from None
    except duckdb.OutOfMemoryException as exc:
        error = CorpusMemoryError("query exceeded its memory limit; aggregate in SQL or select "
                                  "fewer or shorter values")
        # DuckDB says "Allocation failure" when malloc itself failed, not its buffer manager.
        error.by_process = "Allocation failure" in str(exc)
        raise error from None
    finally:
        if token is not None:
            _interrupter.remove(token)
