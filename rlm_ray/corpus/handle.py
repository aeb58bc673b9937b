"""`Corpus`: a small, picklable handle on an ingested corpus.

Opening reads `manifest.json` only. The docs table and a DuckDB database are
opened lazily, once per process (a pickled handle sent to a Ray actor opens
its own); each call uses its own cursor, so threads may share a handle.
`sql`, `grep` and `read` take `timeout_s`: DuckDB is interrupted there.
These run in the calling process, for the caller's own (trusted) use; what
model code asks for goes through `query_pool()`, worker processes with a
kernel memory cap (corpus/query_pool.py), which run these same methods.
"""
from __future__ import annotations

import difflib
import io
import os
import re
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from rlm_ray import storage
from rlm_ray.corpus import sql_gate
from rlm_ray.corpus.duck import CorpusMemoryError, CorpusQueryError, DuckLimits, bounded, connect
from rlm_ray.corpus.layout import read_manifest

EXCERPT_CHARS = 200
# Candidate chunks (RE2 over the whole chunk), split into lines, matched line
# by line (RE2 again). `at` = where the match starts (the lazy prefix's
# length), needed only to excerpt long lines.
GREP_SQL = f"""
SELECT doc_id, path, start_line + idx - 1 AS line, text,
       CASE WHEN length(text) > {EXCERPT_CHARS} THEN length(regexp_extract(text, $3, 1)) ELSE 0 END AS at
FROM (
    SELECT doc_id, path, chunk_id, start_line, unnest(lines) AS text, generate_subscripts(lines, 1) AS idx
    FROM (SELECT doc_id, path, chunk_id, start_line, string_split(text, chr(10)) AS lines
          FROM chunks WHERE regexp_matches(text, $1)))
WHERE regexp_matches(text, $2)
ORDER BY path, chunk_id, idx"""
# Characters special to both Python `re` and RE2; escaping only these keeps a
# literal pattern valid in both engines.
_REGEX_SPECIALS = re.compile(r"([\\.^$|?*+()\[\]{}])")
STATS_KEYS = ("name", "documents", "chunks", "tokens", "bytes", "skipped", "non_utf8_replaced",
              "chunk_tokens", "tokenizer", "created_at", "source")


def escape_literal(text: str) -> str:
    return _REGEX_SPECIALS.sub(r"\\\1", text)


class Corpus:
    def __init__(self, uri: str, manifest: dict, limits: DuckLimits | None = None):
        self.uri = uri.rstrip("/") if storage.is_s3(uri) else os.path.abspath(uri)
        self.manifest = manifest
        self.limits = limits or DuckLimits.from_env()
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._con_pid: int | None = None
        self._docs: list[dict] | None = None
        self._by_key: dict[str, dict] | None = None
        self._pool = None
        self._pool_pid: int | None = None
        self._facts: dict[str, Any] = {}

    def fact(self, name: str, compute: Callable[[], Any]) -> Any:
        """A fact of this (immutable) corpus, computed once per handle: the
        questions a host shares a handle among would otherwise each pay the
        same scan (total characters, the prompt's example paths)."""
        with self._lock:
            if name in self._facts:
                return self._facts[name]
        value = compute()     # outside the lock: it may take a query's time
        with self._lock:
            return self._facts.setdefault(name, value)

    @classmethod
    def open(cls, uri: str, limits: DuckLimits | None = None) -> Corpus:
        return cls(str(uri), read_manifest(str(uri)), limits)

    # -- pickling: a URI, a manifest and limits, never a connection -----------
    def __getstate__(self) -> dict:
        return {"uri": self.uri, "manifest": self.manifest, "limits": asdict(self.limits)}

    def __setstate__(self, state: dict) -> None:
        self.uri, self.manifest = state["uri"], state["manifest"]
        self.limits = DuckLimits(**state["limits"]) if "limits" in state else DuckLimits.from_env()
        self._reset()

    def __repr__(self) -> str:
        return (f"Corpus({self.uri!r}: {self.manifest['documents']} documents, "
                f"{self.manifest['tokens']} tokens)")

    # -- metadata --------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.manifest["tokens"])

    @property
    def stats(self) -> dict:
        return {k: self.manifest[k] for k in STATS_KEYS if k in self.manifest} | {
            "shards": len(self.manifest["shards"])}

    def _file(self, rel: str) -> str:
        return storage.join(self.uri, rel)

    def _load_docs(self) -> list[dict]:
        if self._docs is None:
            data = storage.read_bytes(self._file(self.manifest["docs_file"]))
            rows = pq.read_table(io.BytesIO(data)).to_pylist()
            self._by_key = {r["path"]: r for r in rows} | {r["doc_id"]: r for r in rows}
            self._docs = rows
        return self._docs

    def docs(self, limit: int | None = None) -> list[dict]:
        """One row per document: doc_id, path, n_lines, n_chunks, n_tokens, sha256, bytes."""
        rows = self._load_docs()[:limit] if limit is not None else self._load_docs()
        return [{k: v for k, v in r.items() if k != "shard"} for r in rows]

    def _doc(self, doc: str) -> dict:
        self._load_docs()
        row = self._by_key.get(str(doc)) or self._by_key.get(str(doc).lstrip("./"))
        if row is None:
            close = difflib.get_close_matches(str(doc), [r["path"] for r in self._docs], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise CorpusQueryError(f"unknown document {doc!r}{hint}")
        return row

    # -- DuckDB ----------------------------------------------------------------
    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._con is None or self._con_pid != os.getpid():
                shards = [self._file(s["file"]) for s in self.manifest["shards"]]
                self._con = connect(self.uri, shards, self._file(self.manifest["docs_file"]),
                                    self.limits, corpus_bytes=self.manifest.get("bytes"))
                self._con_pid = os.getpid()
            return self._con.cursor()

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
            if self._pool is not None and self._pool_pid == os.getpid():
                self._pool.close()
            self._con, self._pool = None, None

    def query_pool(self):
        """This process's query workers for this corpus: where model-driven
        calls run (engine.context_view), out of this process's memory."""
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                from rlm_ray.corpus.query_pool import QueryPool

                self._pool = QueryPool(self.uri, self.manifest, self.limits)
                self._pool_pid = os.getpid()
            return self._pool

    def sql(self, query: str, *, limit: int | None = None, timeout_s: float | None = None) -> pa.Table:
        """Run one allow-listed SELECT over the views `chunks` and `docs`; at most
        `limit` rows (a LIMIT node around the parsed statement), interrupted at
        `timeout_s`."""
        cur = self._cursor()
        try:
            with bounded(cur, timeout_s):
                text = sql_gate.executable(cur, str(query), limit, self.limits.max_value_size)
                return cur.execute(text).fetch_arrow_table()
        except duckdb.Error as exc:
            raise self._query_error(exc) from None
        finally:
            cur.close()

    def _query_error(self, exc: Exception) -> CorpusQueryError:
        # DuckDB names files in some errors: the corpus's location is not the model's business.
        message = str(exc).strip()
        for location in {self.uri, os.path.realpath(self.uri) if not storage.is_s3(self.uri) else self.uri}:
            message = message.replace(location, "<corpus>")
        return CorpusQueryError(message)

    def _internal(self, query: str, params: list[Any], timeout_s: float | None) -> list[tuple]:
        """Host-written SQL (no gate), under the same deadline; all rows."""
        return self._run_internal(query, params, timeout_s, lambda cur: cur.fetchall())

    def _internal_table(self, query: str, params: list[Any], timeout_s: float | None) -> pa.Table:
        """`_internal`, as an Arrow table (the REPL's document batches)."""
        return self._run_internal(query, params, timeout_s, lambda cur: cur.fetch_arrow_table())

    def _run_internal(self, query: str, params: list[Any], timeout_s: float | None, fetch):
        cur = self._cursor()
        try:
            with bounded(cur, timeout_s):
                return fetch(cur.execute(query, params))
        except duckdb.Error as exc:
            raise self._query_error(exc) from None
        finally:
            cur.close()

    # -- grep ------------------------------------------------------------------
    def grep(self, pattern: str, limit: int | None = 100, regex: bool = True, case: bool = False,
             *, timeout_s: float | None = None) -> list[dict]:
        """Lines matching `pattern`, in path order: {doc_id, path, line (1-based), text}.

        Everything runs in DuckDB's RE2 (linear time, interrupted at `timeout_s`):
        candidate chunks, then their lines; Python's backtracking `re` never
        matches an untrusted pattern (it only vets the syntax).
        """
        if not isinstance(pattern, str) or not pattern:
            raise CorpusQueryError("grep needs a non-empty pattern")
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise CorpusQueryError(f"grep limit must be a non-negative integer or None, got {limit!r}")
        body = pattern if regex else escape_literal(pattern)
        try:
            re.compile(body)
        except re.error as exc:
            raise CorpusQueryError(f"invalid regular expression {pattern!r}: {exc}") from None
        flags = "" if case else "(?i)"
        # (?m) on chunks: ^/$ at line ends inside a chunk, so every line match is also a chunk match.
        params = [("(?m)" if case else "(?im)") + body, flags + body, flags + "^(.*?)(?:" + body + ")"]
        # A line cut by a chunk boundary can match in both pieces: it counts once,
        # at its first. So a LIMIT may come back short after dropping such
        # repeats; then ask again for more (rare: only lines longer than a chunk).
        fetch = limit
        while True:
            try:
                rows = self._internal(GREP_SQL + ("" if fetch is None else f" LIMIT {int(fetch)}"),
                                      params, timeout_s)
            except CorpusMemoryError:
                raise
            except CorpusQueryError as exc:
                if "time limit" in str(exc):
                    raise
                raise CorpusQueryError(f"grep pattern {pattern!r} is not supported by RE2 "
                                       f"(no look-around or back-references): {exc}") from None
            matches, seen = [], set()
            for doc_id, path, line, text, at in rows:
                if (path, line) not in seen:
                    seen.add((path, line))
                    matches.append({"doc_id": doc_id, "path": path, "line": line, "text": _excerpt(text, at)})
            if fetch is None or len(rows) < fetch or len(matches) >= limit:
                return matches[:limit] if limit is not None else matches
            fetch *= 2

    # -- read ------------------------------------------------------------------
    def read(self, doc: str, start: int = 0, end: int | None = None, *,
             timeout_s: float | None = None) -> str:
        """Lines [start, end) of a document (0-based LINE indices, end exclusive),
        by doc_id or path; the whole document by default."""
        if not isinstance(start, int) or not (end is None or isinstance(end, int)):
            raise CorpusQueryError(f"read(doc, start, end) takes integer line indices, got {start!r}, {end!r}")
        row = self._doc(doc)
        n_lines = row["n_lines"]
        start = max(0, start + n_lines if start < 0 else start)
        end = n_lines if end is None else max(0, end + n_lines if end < 0 else min(end, n_lines))
        if start >= end:
            return ""
        rows = self._chunk_lines(row, start + 1, end, timeout_s)
        if not rows:
            return ""
        first_line = rows[0][0]
        lines = "".join(text for _, text in rows).split("\n")
        # `lines` begins at file line `first_line` (1-based); the last item is
        # what follows the final newline (kept so a file without one round-trips).
        selected = lines[start + 1 - first_line:end + 1 - first_line]
        text = "\n".join(selected)
        return text + "\n" if end + 1 - first_line < len(lines) else text

    def _chunk_lines(self, row: dict, first: int, last: int, timeout_s: float | None) -> list[tuple]:
        """(start_line, text) of the chunks of document `row` that hold 1-based lines
        first..last, in order."""
        # One shard file, pruned to the document's row group(s) by path statistics.
        return self._internal(
            "SELECT start_line, text FROM read_parquet(?) WHERE path = ? "
            "AND end_line >= ? AND start_line <= ? ORDER BY chunk_id",
            [self._file(row["shard"]), row["path"], first, last], timeout_s)


def _excerpt(line: str, at: int) -> str:
    if len(line) <= EXCERPT_CHARS:
        return line
    begin = max(0, min(at - EXCERPT_CHARS // 3, len(line) - EXCERPT_CHARS))
    return ("…" if begin else "") + line[begin:begin + EXCERPT_CHARS] + ("…" if begin + EXCERPT_CHARS < len(line) else "")
