"""A question's scope, enforced by the host: the view a scoped question gets
(`ContextView(scope=...)`, the REPL's `context` over it, the query workers and
the scope's own DuckDB database) sees only the documents its globs match,
through every corpus API, whatever the SQL.

Expected values come from the source tree (os.walk, open, Python's `re`),
never from the corpus code under test. The scope is the `email/` package of a
stdlib slice; the probes look for things that exist only outside it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from rlm_ray.corpus import Corpus, CorpusQueryError, ingest
from rlm_ray.corpus.scopes import glob_regex
from rlm_ray.engine.context_view import ContextView
from rlm_ray.engine.workspace import Workspace

SCOPE = ("email/",)
OUTSIDE_ONLY = "JSONDecodeError"     # defined in json/, never named in email/


def walk_texts(root: Path, folder: str | None = None) -> dict[str, str]:
    """relative path -> text of every non-empty file under `folder` (all files: None);
    ingest skips empty files (they hold no document)."""
    base = root / folder if folder else root
    texts = {}
    for dirpath, _, files in os.walk(base):
        for name in files:
            full = Path(dirpath) / name
            with open(full, "rb") as f:
                data = f.read()
            if data:
                texts[full.relative_to(root).as_posix()] = data.decode("utf-8", "replace")
    return texts


@pytest.fixture(scope="module")
def corpus(stdlib_subset, tmp_path_factory) -> Corpus:
    out = tmp_path_factory.mktemp("scopes") / "corpus"
    ingest([str(stdlib_subset)], str(out))
    handle = Corpus.open(str(out))
    yield handle
    handle.close()


@pytest.fixture(scope="module")
def inside(stdlib_subset) -> dict[str, str]:
    texts = walk_texts(stdlib_subset, "email")
    assert len(texts) > 20
    return texts


@pytest.fixture(scope="module")
def outside(stdlib_subset, inside) -> dict[str, str]:
    texts = {p: t for p, t in walk_texts(stdlib_subset).items() if p not in inside}
    # The probe term really is outside-only: the tests below would pass vacuously otherwise.
    assert any(OUTSIDE_ONLY in t for t in texts.values())
    assert not any(OUTSIDE_ONLY in t for t in inside.values())
    return texts


@pytest.fixture(scope="module")
def view(corpus) -> ContextView:
    return ContextView(corpus, scope=SCOPE)


def test_counts_docs_and_stats_are_the_scopes(view, corpus, inside):
    lines = sum(len(t.split("\n")) - (1 if t.endswith("\n") else 0) for t in inside.values())
    stats = view.stats
    assert stats["documents"] == len(inside) < corpus.manifest["documents"]
    assert stats["characters"] == sum(len(t) for t in inside.values())
    assert stats["scope"] == list(SCOPE)
    assert "skipped" not in stats and "shards" not in stats
    assert sorted(d["path"] for d in view.docs()) == sorted(inside)
    assert sum(d["n_lines"] for d in view.docs()) == lines
    assert view.sequence_info()["documents"] == len(inside)
    # len(view) is tokens: the scope's, far below the corpus's.
    assert len(view) == sum(d["n_tokens"] for d in view.docs()) < len(corpus)


def test_grep_finds_only_in_scope_lines(view, inside):
    assert view.grep(OUTSIDE_ONLY, limit=None) == []
    pattern = r"def \w+\(self, msg"
    want = sorted((p, i + 1) for p, t in inside.items()
                  for i, line in enumerate(t.split("\n")) if re.search(pattern, line, re.I))
    assert want
    got = sorted((h["path"], h["line"]) for h in view.grep(pattern, limit=None))
    assert got == want


def test_read_of_an_outside_path_or_doc_id_is_not_found(view, corpus, inside, outside):
    path = next(p for p, t in outside.items() if OUTSIDE_ONLY in t)
    outside_id = next(d["doc_id"] for d in corpus.docs() if d["path"] == path)
    for doc in (path, outside_id, "no/such/file.py"):
        with pytest.raises(CorpusQueryError, match="unknown document.*sees only its scope"):
            view.read(doc)
    some = sorted(inside)[3]
    assert view.read(some) == inside[some]


SQL_PROBES = [
    # every shape of filter, join, subquery, CTE and set operation over both views
    "SELECT count(*) AS n FROM chunks WHERE path NOT LIKE 'email/%'",
    "SELECT count(*) AS n FROM docs WHERE path LIKE 'json/%' OR path NOT LIKE 'email/%'",
    "SELECT count(*) AS n FROM chunks WHERE text LIKE '%JSONDecodeError%'",
    "SELECT count(*) AS n FROM (SELECT * FROM chunks WHERE path NOT IN "
    "(SELECT path FROM docs WHERE path LIKE 'email/%'))",
    "SELECT count(*) AS n FROM chunks c JOIN docs d USING (doc_id) WHERE d.path NOT LIKE 'email/%'",
    "WITH everything AS (SELECT path FROM chunks UNION ALL SELECT path FROM docs) "
    "SELECT count(*) AS n FROM everything WHERE path NOT LIKE 'email/%'",
    "WITH RECURSIVE r(p) AS (SELECT path FROM docs UNION SELECT p FROM r) "
    "SELECT count(*) AS n FROM r WHERE p NOT LIKE 'email/%'",
    "SELECT count(*) AS n FROM main.chunks WHERE path NOT LIKE 'email/%'",
    "SELECT count(*) AS n FROM (SELECT path FROM chunks EXCEPT SELECT path FROM docs "
    "WHERE path LIKE 'email/%')",
    # a predicate that errors on outside rows: evaluated on none of them
    "SELECT count(*) AS n FROM chunks WHERE CASE WHEN text LIKE '%JSONDecodeError%' "
    "THEN CAST(text AS INTEGER) ELSE 0 END > 0",
]


@pytest.mark.parametrize("query", SQL_PROBES)
def test_sql_sees_no_outside_row(view, corpus, query):
    assert view.sql(query) == [{"n": 0}]
    # The probe does reach outside rows when nothing confines it.
    try:
        unscoped = ContextView(corpus).sql(query)
    except CorpusQueryError as exc:
        assert "Could not convert" in str(exc) and OUTSIDE_ONLY in str(exc)
    else:
        assert unscoped[0]["n"] > 0


def test_sql_aggregates_match_the_source_tree(view, inside):
    rows = view.sql("SELECT count(DISTINCT path) AS docs, sum(length(text))::BIGINT AS chars "
                    "FROM chunks")
    assert rows == [{"docs": len(inside), "chars": sum(len(t) for t in inside.values())}]


BASE_DATA_PROBES = [
    "SELECT * FROM read_parquet('{shard}')",
    "SELECT * FROM '{shard}'",
    "SELECT * FROM parquet_scan('{shard}')",
    "SELECT * FROM query_table('chunks')",
    "SELECT * FROM duckdb_tables()",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM memory.main.chunks",
    "ATTACH '{shard}' AS x",
    "SELECT getvariable('x')",
]


@pytest.mark.parametrize("probe", BASE_DATA_PROBES)
def test_base_data_is_unreachable_from_model_sql(view, corpus, probe):
    shard = os.path.join(corpus.uri, corpus.manifest["shards"][0]["file"])
    with pytest.raises(CorpusQueryError):
        view.sql(probe.format(shard=shard))


def test_the_scopes_database_cannot_read_files_even_without_the_gate(corpus):
    """Defence below the gate: host-written SQL on a scope's own database cannot
    open a shard either (file access is off and locked there)."""
    from rlm_ray.corpus.scoped import ScopedCorpus

    scoped = ScopedCorpus(corpus, SCOPE, 60)
    try:
        shard = os.path.join(corpus.uri, corpus.manifest["shards"][0]["file"])
        for query in (f"SELECT count(*) FROM read_parquet('{shard}')",
                      "SET enable_external_access = true"):
            with pytest.raises(CorpusQueryError):
                scoped._internal(query, [], 30)
        tables = scoped._internal("SELECT table_name FROM duckdb_tables() ORDER BY 1", [], 30)
        assert tables == [("chunks",), ("docs",)]
    finally:
        scoped.close()


def test_the_repl_sequence_len_index_and_iteration_cover_the_scope(view, inside):
    workspace = Workspace(context=None, view=view, host_functions={},
                          sandbox_opts={"timeout_s": 120})
    try:
        result = workspace.run(
            "import hashlib\n"
            "texts = list(context)\n"
            "print(len(context), len(texts), sum(len(t) for t in texts))\n"
            "print(context[0] == texts[0], context[-1] == texts[-1], len(context[2:5]))\n"
            "print(hashlib.sha256('\\x00'.join(texts).encode()).hexdigest())\n"
            "print(sum('JSONDecodeError' in t for t in context))\n"
            "try:\n    context[len(texts)]\nexcept IndexError:\n    print('out of range')\n", 120)
        assert result.error is None, result.error
        import hashlib

        ordered = [inside[p] for p in sorted(inside)]
        digest = hashlib.sha256("\x00".join(ordered).encode()).hexdigest()
        assert result.output.split("\n")[:5] == [
            f"{len(inside)} {len(inside)} {sum(map(len, ordered))}", "True True 3", digest, "0",
            "out of range"]
    finally:
        workspace.close()


def test_an_empty_scope_is_an_error_and_a_full_one_is_the_corpus(corpus):
    with pytest.raises(CorpusQueryError, match="matches no document"):
        ContextView(corpus, scope=("nowhere/**", "email"))   # `email` alone names no document
    whole = ContextView(corpus, scope=("**",))
    assert whole.sequence_info()["documents"] == corpus.manifest["documents"]


def test_globs_match_whole_paths_with_double_star_crossing_folders():
    matches = lambda glob, path: re.match(glob_regex(glob), path) is not None  # noqa: E731
    assert matches("repos/django/", "repos/django/db/models.py")
    assert matches("repos/django/**", "repos/django/db/models.py")
    assert matches("repos/*/setup.py", "repos/flask/setup.py")
    assert not matches("repos/*/setup.py", "repos/flask/sub/setup.py")
    assert matches("repos/**/setup.py", "repos/flask/sub/setup.py")
    assert not matches("repos/django", "repos/django/db/models.py")
    assert not matches("repos/django/", "repos/django-extra/x.py")


def test_the_first_user_message_shows_the_scope_and_its_size(corpus, inside):
    from types import SimpleNamespace

    from rlm_ray.engine.run import describe
    from rlm_ray.engine.spec import EngineSettings

    spec = SimpleNamespace(scope=SCOPE, settings=EngineSettings(),
                           budget=SimpleNamespace(remaining_s=lambda: 120.0))
    kind, metadata, view = describe(corpus, spec)
    lines = metadata.splitlines()
    assert kind == "corpus" and lines[1].startswith("scope: email/ ")
    tokens = sum(d["n_tokens"] for d in view.docs())
    assert f"documents: {len(inside)}" in lines and f"tokens: {tokens}" in lines
    shown = [line.strip() for line in lines if line.startswith("  ")]
    assert shown and all(p in inside for p in shown)


def test_a_workers_scope_cache_is_bounded_and_reuses_databases(corpus):
    from rlm_ray.corpus.scoped import ScopeCache, ScopedCorpus

    cache = ScopeCache(corpus, entries=2)
    first = cache.get(["email/"], 60)
    assert cache.get(["email/"], 60) is first          # resolved once, then reused
    assert isinstance(first, ScopedCorpus) and cache.get(["**"], 60) is corpus
    cache.get(["json/"], 60)                           # a third scope evicts the oldest
    assert list(cache._scopes) == [("**",), ("json/",)]
    with pytest.raises(CorpusQueryError, match="closed"):
        first.sql("SELECT 1")


@pytest.mark.timeout(300)
def test_a_scope_over_a_corpus_on_s3(s3_bucket, tmp_path):
    """The scope's copy is read through httpfs like any S3 corpus; afterwards the
    scope's database has no file access and no credentials (its secret dropped)."""
    for folder, word in (("inside", "kept"), ("outside", "hidden")):
        (tmp_path / "src" / folder).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "src" / folder / f"f{i}.txt").write_text(f"{word} line {i}\n" * (i + 1))
    out = f"s3://{s3_bucket}/scoped"
    ingest([str(tmp_path / "src")], out)
    corpus = Corpus.open(out)
    try:
        view = ContextView(corpus, scope=("inside/",))
        assert view.sequence_info()["documents"] == 3
        assert view.grep("hidden", limit=None) == []
        assert len(view.grep("kept", limit=None)) == 1 + 2 + 3
        assert view.sql("SELECT count(*) AS n FROM chunks WHERE path LIKE 'outside/%'") == [{"n": 0}]
        assert view.read("inside/f1.txt") == "kept line 1\n" * 2
        with pytest.raises(CorpusQueryError):
            view.sql("SELECT * FROM duckdb_secrets()")
    finally:
        corpus.close()


def test_a_childs_context_slice_is_built_from_the_scope(view, inside):
    """`rlm_query(..., context=context[a:b])` hands the child a str of the scope's
    documents (the REPL side converts it); `context=context` stays the scoped corpus."""
    seen = []

    def rlm_query(prompt, model=None, context=None):     # the host side of the call
        seen.append(context)
        return "ok"

    workspace = Workspace(context=None, view=view, host_functions={"rlm_query": rlm_query},
                          sandbox_opts={"timeout_s": 120})
    try:
        result = workspace.run("rlm_query('q', context=context[-2:])\n"
                               "rlm_query('q', context=context)\n", 120)
        assert result.error is None, result.error
    finally:
        workspace.close()
    last_two = sorted(inside)[-2:]
    n = len(inside)
    assert seen[0] == "\n".join(f"=== document {n - 2 + i}: {p} ===\n{inside[p]}\n"
                                for i, p in enumerate(last_two))
    assert seen[1] is None


def test_a_scope_too_large_to_copy_is_a_clear_error(corpus):
    from rlm_ray.corpus.duck import DuckLimits
    from rlm_ray.corpus.scoped import ScopedCorpus

    tight = Corpus(corpus.uri, corpus.manifest, DuckLimits(memory_mb=1, temp_mb=0, threads=1))
    with pytest.raises(CorpusQueryError, match=r"scope \*\* is too large to copy"):
        ScopedCorpus(tight, ("**",), 60)
