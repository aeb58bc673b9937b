"""A question's scope, enforced where its queries run: `ScopedCorpus`, a corpus
whose DuckDB database holds only the documents the scope's globs match.

Why a database of copies and not a filtered view: a view `SELECT * FROM
<shards> WHERE <in scope>` lets DuckDB's optimizer push the model's own
predicates below the scope filter (and reorder a conjunction by cost), so an
expression like `CAST(text AS INTEGER)` would be evaluated on rows outside
the scope, and its error message would print them. Here the scope's rows are
copied, by host-written SQL before any model SQL runs, into tables `docs` and
`chunks` of a fresh in-memory database; then file access is switched off
(`enable_external_access=false`, no allowed path) and the configuration
locked. Model SQL, which the gate already limits to `chunks`/`docs`, CTEs and
a few table functions, can reach nothing else in that database: no base
table, no shard file, no catalog object with outside rows exists there. The
same goes for grep, read, docs and the document sequence, which run there too.

Resolution happens once per scope per query worker (`ScopeCache`), not per
call: the docs table is filtered by the globs' anchored RE2 patterns
(`corpus.scopes.glob_regex`), then only the shards holding those documents
are read. A scope that matches nothing is an error; one that matches every
document is the corpus itself (no copy).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import duckdb

from rlm_ray import storage
from rlm_ray.corpus.duck import (CorpusMemoryError, _create_s3_secret, _extension_dir, _sql_str,
                                 bounded, spill_dir)
from rlm_ray.corpus.handle import Corpus
from rlm_ray.corpus.scopes import glob_regex
from rlm_ray.corpus.sql_gate import CorpusQueryError

SCOPE_CACHE_ENTRIES = 8      # scoped databases one query worker keeps (least recently used out)
# Corpus-wide facts that stay in a scoped question's stats (the counts are the scope's own;
# skips and shard counts describe the whole corpus, so they are left out).
KEPT_STATS = ("name", "chunk_tokens", "tokenizer", "created_at")


def describe_globs(globs: Sequence[str]) -> str:
    return ", ".join(globs)


class ScopedCorpus(Corpus):
    """The documents of `globs` only, in a database of their own (see the module
    docstring). Used by query workers; it never leaves the process that built it."""

    def __init__(self, base: Corpus, globs: Sequence[str], timeout_s: float | None,
                 built: tuple | None = None) -> None:
        super().__init__(base.uri, base.manifest, base.limits)
        self.globs = tuple(globs)
        self._con, self.counts = built or _build(base, self.globs, timeout_s, copy_whole=True)
        self._con_pid = os.getpid()

    def __getstate__(self) -> dict:
        raise TypeError("a ScopedCorpus stays in the process that built it")

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._con is None:
                raise CorpusQueryError("this scope's database is closed")
            return self._con.cursor()

    def __len__(self) -> int:
        return int(self.counts["tokens"])

    @property
    def stats(self) -> dict:
        return ({k: self.manifest[k] for k in KEPT_STATS if k in self.manifest}
                | {k: self.counts[k] for k in ("documents", "chunks", "tokens", "bytes")}
                | {"scope": list(self.globs)})

    def _load_docs(self) -> list[dict]:
        if self._docs is None:
            rows = self._internal_table("SELECT * FROM docs ORDER BY path", [], None).to_pylist()
            self._by_key = {r["path"]: r for r in rows} | {r["doc_id"]: r for r in rows}
            self._docs = rows
        return self._docs

    def _doc(self, doc: str) -> dict:
        # The same answer for a path outside the scope and a path that does not
        # exist: the scope does not even tell which documents lie outside it.
        try:
            return super()._doc(doc)
        except CorpusQueryError as exc:
            raise CorpusQueryError(f"{exc} (this question sees only its scope: "
                                   f"{describe_globs(self.globs)})") from None

    def _chunk_lines(self, row: dict, first: int, last: int, timeout_s: float | None) -> list[tuple]:
        return self._internal("SELECT start_line, text FROM chunks WHERE path = ? AND end_line >= ? "
                              "AND start_line <= ? ORDER BY chunk_id",
                              [row["path"], first, last], timeout_s)


def open_scope(base: Corpus, globs: Sequence[str], timeout_s: float | None) -> Corpus:
    """The corpus a scope's calls run on: a ScopedCorpus, or `base` itself when the
    globs match every document (decided before anything is copied)."""
    built = _build(base, tuple(globs), timeout_s, copy_whole=False)
    return base if built is None else ScopedCorpus(base, globs, timeout_s, built)


def _build(base: Corpus, globs: tuple[str, ...], timeout_s: float | None, copy_whole: bool):
    """(locked connection, counts) of a database holding the scope's rows only; None
    when the scope is every document and `copy_whole` is off."""
    limits = base.limits
    con = duckdb.connect(":memory:", config={
        "autoinstall_known_extensions": False, "autoload_known_extensions": False,
        "extension_directory": _extension_dir(), "memory_limit": f"{limits.memory_mb}MB",
        "threads": limits.threads,
        "temp_directory": spill_dir(os.getpid()) if limits.temp_mb else "",
        "max_temp_directory_size": f"{limits.temp_mb}MB",
    })
    try:
        try:
            counts = _copy_scope(con, base, globs, timeout_s, copy_whole)
        except CorpusMemoryError as exc:
            error = CorpusMemoryError(
                f"scope {describe_globs(globs)} is too large to copy into its own database "
                f"({limits.memory_mb} MB of memory, {limits.temp_mb} MB of spill); "
                "narrow it, or leave it out to see the whole corpus")
            error.by_process = exc.by_process
            raise error from None
        if counts is None:
            con.close()
            return None
        # From here on nothing outside these tables is reachable, whatever runs.
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con, counts
    except BaseException:
        con.close()
        raise


def _copy_scope(con: duckdb.DuckDBPyConnection, base: Corpus, globs: tuple[str, ...],
                timeout_s: float | None, copy_whole: bool) -> dict | None:
    s3 = storage.is_s3(base.uri)
    if s3:
        con.execute("LOAD httpfs")
        _create_s3_secret(con)
    docs_uri = base._file(base.manifest["docs_file"])
    match = " OR ".join(f"regexp_matches(path, {_sql_str(glob_regex(g))})" for g in globs)
    cur = con.cursor()
    try:
        with bounded(cur, timeout_s):
            cur.execute(f"CREATE TABLE scope_docs AS SELECT * FROM read_parquet({_sql_str(docs_uri)}) "
                        f"WHERE {match} ORDER BY path")
            documents, shards = cur.execute(
                "SELECT count(*), list(DISTINCT shard) FROM scope_docs").fetchone()
            if not documents:
                raise CorpusQueryError(f"scope {describe_globs(globs)} matches no document of "
                                       f"the corpus ({base.manifest['documents']} documents; "
                                       "globs match whole paths, `dir/` or `dir/**` for a folder)")
            if not copy_whole and documents == int(base.manifest["documents"]):
                return None
            files = ", ".join(_sql_str(base._file(s)) for s in sorted(shards))
            cur.execute(f"CREATE TABLE chunks AS SELECT * FROM read_parquet([{files}]) "
                        "WHERE path IN (SELECT path FROM scope_docs) ORDER BY path, chunk_id")
            cur.execute("CREATE TABLE docs AS SELECT * EXCLUDE (shard) FROM scope_docs ORDER BY path")
            cur.execute("DROP TABLE scope_docs")
            tokens, chunks, size = cur.execute(
                "SELECT coalesce(sum(n_tokens), 0), coalesce(sum(n_chunks), 0), "
                "coalesce(sum(bytes), 0) FROM docs").fetchone()
            characters = cur.execute("SELECT coalesce(sum(length(text)), 0) FROM chunks").fetchone()[0]
    except duckdb.Error as exc:
        raise base._query_error(exc) from None
    finally:
        cur.close()
    if s3:
        con.execute("DROP SECRET corpus_s3")
    return {"documents": int(documents), "tokens": int(tokens), "chunks": int(chunks),
            "bytes": int(size), "characters": int(characters)}


class ScopeCache:
    """A query worker's scoped databases, by globs: a question's calls (and other
    questions with the same scope) reuse one, built on first use."""

    def __init__(self, base: Corpus, entries: int = SCOPE_CACHE_ENTRIES) -> None:
        self.base = base
        self.entries = entries
        self._scopes: OrderedDict[tuple[str, ...], Corpus] = OrderedDict()

    def get(self, globs: Sequence[str], timeout_s: float | None) -> Corpus:
        """The corpus a call with this scope runs on: a ScopedCorpus, or the base
        corpus when the globs match every document."""
        key = tuple(globs)
        if key in self._scopes:
            self._scopes.move_to_end(key)
            return self._scopes[key]
        corpus = open_scope(self.base, key, timeout_s)
        self._scopes[key] = corpus
        # Copies cost memory: at most `entries` of them, and (the newest aside) no more
        # text in all than one database's memory limit.
        budget = self.base.limits.memory_mb << 20
        while len(self._scopes) > 1 and (len(self._scopes) > self.entries
                                         or self._copied_bytes() > budget):
            _, old = self._scopes.popitem(last=False)
            if old is not self.base:
                old.close()
        return corpus

    def _copied_bytes(self) -> int:
        return sum(c.counts["bytes"] for c in self._scopes.values() if isinstance(c, ScopedCorpus))


def scope_counts(corpus: Corpus) -> dict:
    """What the host needs to know about the corpus a scope resolved to."""
    if isinstance(corpus, ScopedCorpus):
        return {"whole": False, **corpus.counts}
    return {"whole": True, **{k: corpus.manifest[k] for k in ("documents", "tokens", "chunks", "bytes")},
            "characters": None}

