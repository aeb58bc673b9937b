"""The REPL's view of a corpus: `ContextView`, a proxy over the Corpus whose
methods return JSON-friendly values with caps.

Every call the model's code makes runs in the corpus's query workers
(`corpus.query_pool`), processes with a kernel memory cap, never in the host:
a runaway query costs its worker, not the host and its other questions. Caps
keep one careless `context.sql("select * from chunks")` from dragging a
100M-token corpus through the actor: the parsed query is wrapped in a LIMIT,
the reply is cut at a byte cap, and the model is told when either cut it.
Every call runs under the block's deadline (`set_deadline`): DuckDB is
interrupted before it, and the worker killed at it.
"""
from __future__ import annotations

import datetime
import decimal
import threading
import time
from typing import Any

from rlm_ray import storage
from rlm_ray.corpus.query_pool import QuerySession
from rlm_ray.corpus.scoped import KEPT_STATS

MAX_GREP_LIMIT = 10_000
# Without a block deadline (direct use of the view), a host call still ends.
DEFAULT_CALL_TIMEOUT_S = 300.0
# The REPL's lazy document sequence (repl_context.py) fetches documents in
# batches bounded by bytes and count, so neither the actor nor the sandbox
# ever holds more than a batch. Both caps stay well under the sandbox's
# per-value limit (16 MiB) and its 64 MiB frame limit, JSON escapes included.
# 2 MiB: the actor's transient peak while iterating the stdlib is ~+40 MB at
# 2 MiB vs ~+70 MB at 4 MiB (DuckDB scan + Arrow + str + JSON copies).
DOC_BATCH_BYTES = 2 * 1024 * 1024
# A slice of the corpus passed as a child RLM's context= is sent as one str: under the
# sandbox bridge's 16 MiB value cap, with room for the rest of the frame.
CHILD_CONTEXT_BYTES = 8 * 1024 * 1024
DOC_BATCH_MAX = 256
MAX_DOC_BYTES = 8 * 1024 * 1024     # one document alone, when it exceeds a batch


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time, decimal.Decimal)):
        return str(value)
    return str(value)


HOST_ONLY_STATS = frozenset({"source"})


HEAD_PATHS_CACHED = 16   # doc_paths(0, n) for n up to this is a corpus fact (repr shows 3)


class ContextView:
    """What `context` is in the REPL when the input is a corpus."""

    # The sandbox exposes exactly these (not drain_notes, not the Corpus itself).
    __sandbox_expose__ = ("sql", "grep", "read", "docs", "stats",
                          "sequence_info", "doc_paths", "doc_texts")

    def __init__(self, corpus, *, max_rows: int = 5000, max_read_chars: int = 2_000_000,
                 scope: tuple[str, ...] = (), deadline: float | None = None) -> None:
        self._corpus = corpus
        self._max_rows = max_rows
        self._max_read_chars = max_read_chars
        self._notes: list[str] = []
        self._lock = threading.Lock()
        self._characters: int | None = None
        self._deadline = deadline    # until the loop sets each block's: the question's end
        self.scope = tuple(scope or ())
        # The scope's counts, resolved once for the question (an empty scope raises
        # here); None: the whole corpus (no scope, or one that covers every document).
        self._scope_counts: dict | None = None
        self._queries = QuerySession(corpus.query_pool(), self.scope)   # one call at a time
        if self.scope:
            counts = self._queries.scope_counts(self._timeout_s())
            if counts.get("whole"):
                self._queries = QuerySession(corpus.query_pool())
            else:
                self._scope_counts = counts
                self._characters = int(counts["characters"])

    def set_deadline(self, deadline: float | None) -> None:
        """The running block's end (time.monotonic()); None: the default per call."""
        self._deadline = deadline

    def _timeout_s(self) -> float:
        if self._deadline is None:
            return DEFAULT_CALL_TIMEOUT_S
        return self._deadline - time.monotonic()

    # -- notes for the model (drained by the loop into the REPL output) -----
    def _note(self, text: str) -> None:
        with self._lock:
            self._notes.append(text)

    def drain_notes(self) -> list[str]:
        with self._lock:
            notes, self._notes = self._notes, []
        return notes

    # -- the API ------------------------------------------------------------
    @property
    def stats(self) -> dict:
        # `source` names host paths / bucket URIs the corpus was built from:
        # provenance for operators, not something model code needs to see.
        return _json_safe(self.metadata_stats() | {"characters": self.characters()})

    def metadata_stats(self) -> dict:
        """The counts the model is shown: the scope's when the question has one."""
        stats = {k: v for k, v in self._corpus.stats.items() if k not in HOST_ONLY_STATS}
        if self._scope_counts is None:
            return stats | ({"scope": list(self.scope)} if self.scope else {})
        # Corpus-wide facts (skips, shard count) are not the scope's: only its own counts.
        return ({k: stats[k] for k in KEPT_STATS if k in stats}
                | {k: self._scope_counts[k] for k in ("documents", "chunks", "tokens", "bytes")}
                | {"scope": list(self.scope)})

    def characters(self) -> int:
        """Total characters of all documents (what `sum(len(doc) for doc in context)`
        gives; the manifest's `bytes` are of the raw files, which differ for
        documents whose invalid UTF-8 was replaced). One scan, then cached."""
        if self._characters is None and self._corpus.manifest.get("characters") is not None:
            self._characters = int(self._corpus.manifest["characters"])  # if ingest records it
        if self._characters is None:
            def scan() -> int:
                row, _ = self._queries.sql("SELECT coalesce(sum(length(text)), 0) AS n FROM chunks",
                                           None, self._timeout_s())
                return int(row.column("n")[0].as_py())
            # Unscoped here (a scope's count came with the scope): the whole corpus's.
            self._characters = self._corpus.fact("characters", scan)
        return self._characters

    def __len__(self) -> int:
        return int(self._counts()["tokens"])

    def _counts(self) -> dict:
        return self._scope_counts if self._scope_counts is not None else self._corpus.stats

    def sql(self, query: str) -> list[dict]:
        query = str(query).strip().rstrip(";").strip()
        if not query:
            raise ValueError("context.sql: empty query")
        cap = self._max_rows
        table, cut = self._queries.sql(query, cap + 1, self._timeout_s())
        rows = table.slice(0, cap).to_pylist()
        if cut:
            mb = self._queries.pool.limits.result_mb
            self._note(f"context.sql returned only the first {len(rows)} rows: the rest would pass "
                       f"the {mb} MB one result may hold; select fewer or shorter columns "
                       "(e.g. substr(text, 1, 200)), aggregate in SQL or page with LIMIT/OFFSET")
        elif table.num_rows > cap:
            self._note(f"context.sql returned only the first {cap} rows; aggregate in SQL "
                       "or page with LIMIT/OFFSET")
        return _json_safe(rows)

    def example_paths(self, count: int) -> list[str]:
        """The first `count` paths (for the prompt's metadata)."""
        def first_paths() -> list[str]:
            table, _ = self._queries.sql(f"SELECT path FROM docs ORDER BY path LIMIT {int(count)}",
                                         None, self._timeout_s())
            return table.column("path").to_pylist()
        if self._scope_counts is not None:   # the scope's own paths
            return first_paths()
        return list(self._corpus.fact(f"example_paths:{int(count)}", first_paths))

    def grep(self, pattern: str, limit: int | None = 100, regex: bool = True,
             case: bool = False) -> list[dict]:
        limit = MAX_GREP_LIMIT if limit is None else max(1, min(int(limit), MAX_GREP_LIMIT))
        hits = self._queries.grep(str(pattern), limit, bool(regex), bool(case), self._timeout_s())
        if len(hits) >= limit:
            self._note(f"context.grep stopped at limit={limit} hits")
        return _json_safe(list(hits))

    def read(self, doc: str, start: int = 0, end: int | None = None) -> str:
        text, chars = self._queries.read(doc if isinstance(doc, str) else str(doc), int(start),
                                         None if end is None else int(end),
                                         self._max_read_chars, self._timeout_s())
        if chars > len(text):
            self._note(f"context.read returned the first {len(text)} characters of "
                       f"{chars}; read fewer lines at a time")
        return text

    def docs(self, limit: int | None = None) -> list[dict]:
        wanted = None if limit is None else max(0, int(limit))
        cap = self._max_rows if wanted is None else min(wanted, self._max_rows)
        rows = self._queries.docs(cap + 1, self._timeout_s())
        if len(rows) > cap and (wanted is None or wanted > cap):
            self._note(f"context.docs returned only the first {cap} documents; "
                       "use context.sql on the docs view to filter")
        return _json_safe(list(rows[:cap]))

    # -- the corpus as a sequence of documents (the REPL side: repl_context.py) --
    # Index i is the i-th document in path order (the order of `docs()` and of
    # `SELECT ... FROM docs ORDER BY path`). Everything goes through DuckDB: no
    # list of all documents is ever built in Python.
    def sequence_info(self) -> dict:
        """What the REPL's `context` needs up front: counts from the manifest."""
        stats = self._counts()
        return {"documents": int(stats["documents"]), "tokens": int(stats["tokens"]),
                "batch_bytes": DOC_BATCH_BYTES, "child_context_bytes": CHILD_CONTEXT_BYTES}

    def _doc_range(self, start: int, stop: int) -> tuple[int, int]:
        count = int(self._counts()["documents"])
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= count:
            raise IndexError(f"document range [{start}, {stop}) is outside 0..{count}")
        return start, stop

    def doc_paths(self, start: int, stop: int) -> list[str]:
        """Paths of documents [start, stop), at most `max_rows` of them."""
        start, stop = self._doc_range(start, stop)
        count = min(stop - start, self._max_rows)
        if count == 0:
            return []
        if start == 0 and count <= HEAD_PATHS_CACHED and self._scope_counts is None:
            # The head every `repr(context)` shows: the corpus's, asked once per host.
            return list(self._corpus.fact(f"head_paths:{count}", lambda: self._doc_rows(
                0, count).column("path").to_pylist()))
        return self._doc_rows(start, count).column("path").to_pylist()

    def doc_texts(self, start: int, stop: int, max_bytes: int = DOC_BATCH_BYTES) -> list[str]:
        """Full texts of documents start, start+1, ... (< stop): as many whole
        documents as fit in `max_bytes` (capped at DOC_BATCH_BYTES), at least one.
        The caller asks again from where this batch ended."""
        start, stop = self._doc_range(start, stop)
        budget = max(1, min(int(max_bytes), DOC_BATCH_BYTES))
        count = min(stop - start, DOC_BATCH_MAX)
        if count == 0:
            return []
        batch, total = [], 0
        for row in self._doc_rows(start, count).to_pylist():
            size = int(row["bytes"] or 0)
            if batch and total + size > budget:
                break
            batch.append(row)
            total += size
        if total > MAX_DOC_BYTES:
            path = batch[0]["path"]
            raise ValueError(
                f"document {start} ({path}) has {total} bytes, more than one REPL value may "
                f"hold ({MAX_DOC_BYTES}); read it in parts with "
                f"context.read({path!r}, start_line, end_line)")
        # The batch is a contiguous run of paths, so a range filter selects exactly
        # its chunks (and lets DuckDB skip row groups by their path statistics);
        # over the whole corpus, only the shards holding the batch are read.
        paths = [row["path"] for row in batch]
        if self._scope_counts is not None:     # the scope's own database: its tables only
            table = self._query("SELECT path, text FROM chunks WHERE path BETWEEN ? AND ? "
                                "ORDER BY path, chunk_id", [paths[0], paths[-1]])
        else:
            shards = sorted({storage.join(self._corpus.uri, row["shard"]) for row in batch})
            table = self._query("SELECT path, text FROM read_parquet(?) WHERE path BETWEEN ? "
                                "AND ? ORDER BY path, chunk_id", [shards, paths[0], paths[-1]])
        parts: dict[str, list[str]] = {path: [] for path in paths}
        for path, text in zip(table.column("path").to_pylist(), table.column("text").to_pylist()):
            parts[path].append(text)
        return ["".join(parts[path]) for path in paths]

    def _doc_rows(self, start: int, count: int):
        """path, bytes (and shard) of `count` documents from index `start` (path order)."""
        if self._scope_counts is not None:
            return self._query(f"SELECT path, bytes FROM docs ORDER BY path "
                               f"LIMIT {int(count)} OFFSET {int(start)}", [])
        docs_file = storage.join(self._corpus.uri, self._corpus.manifest["docs_file"])
        return self._query(f"SELECT path, bytes, shard FROM read_parquet(?) ORDER BY path "
                           f"LIMIT {int(count)} OFFSET {int(start)}", [docs_file])

    def _query(self, query: str, params: list):
        # Fixed queries of ours, not model SQL, over the corpus's own files:
        # still in a query worker (they read documents model code chose), under
        # the running block's deadline.
        return self._queries.table(query, params, self._timeout_s())
