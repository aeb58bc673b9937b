"""Model SQL and grep are untrusted: the allow-list gate, the row cap
on the parsed statement, DuckDB interrupted at the caller's deadline, a memory
cap the host's RSS respects, and grep without a backtracking engine. Attacks
that could hang or bloat the old code run in a child process that the test
stops as soon as the limit the project should enforce has clearly passed."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from fixtures.codebase import scan_lines
from rlm_ray.corpus import Corpus, CorpusQueryError, ingest
from rlm_ray.corpus.query_pool import QuerySession
from rlm_ray.engine.context_view import ContextView

# A line of word characters with no "!!": `(\w|\w)+!!` backtracks 2^n on it in Python `re`.
WORDY = "w" * 48
FILES = {
    "pkg/a.py": "import os\nimport re\n\n" + WORDY + "\nx = 1\n",
    "pkg/b.py": "from os import path\n" + WORDY + " = 2\n",
    "notes.md": "# Notes\nNothing to import here? IMPORT!\n",
}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("confine_src")
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture(scope="module")
def corpus_dir(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("confine") / "corpus"
    ingest([str(source)], str(out), chunk_tokens=200)
    return out


@pytest.fixture(scope="module")
def corpus(corpus_dir) -> Corpus:
    return Corpus.open(str(corpus_dir))


def run_child(code: str, *, env: dict | None = None, kill_above_mb: float | None = None,
              timeout_s: float = 60) -> tuple[str, float, float]:
    """Run `code` in a fresh interpreter; sample its RSS every 20 ms and kill it
    once it grows `kill_above_mb` past its RSS at `ready`, or runs `timeout_s`.
    Returns (stdout, peak RSS MB, RSS MB when it printed `ready`)."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    started, peak, ready_rss = time.monotonic(), 0.0, None
    try:
        while proc.poll() is None:
            rss = _rss_mb(proc.pid)
            peak = max(peak, rss)
            if ready_rss is None and any(line.startswith("ready") for line in lines):
                ready_rss = rss
            if kill_above_mb is not None and ready_rss is not None and rss - ready_rss > kill_above_mb:
                pytest.fail(f"child RSS grew {rss - ready_rss:.0f} MB past its start (limit {kill_above_mb} MB)")
            if time.monotonic() - started > timeout_s:
                pytest.fail(f"child still running after {timeout_s}s")
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(timeout=10)
    assert proc.returncode == 0, proc.stderr.read()
    return "".join(lines), peak, ready_rss or 0.0


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


# -- the allow-list --------------------------------------------------------------

LEGIT = [
    "WITH per_dir AS (SELECT split_part(path, '/', 1) AS top, count(*) AS n FROM docs GROUP BY 1) "
    "SELECT * FROM per_dir ORDER BY top",
    "SELECT path, n_lines FROM docs WHERE path IN (SELECT path FROM chunks WHERE text ILIKE '%import%')",
    "SELECT path, row_number() OVER (PARTITION BY split_part(path, '/', 1) ORDER BY path) AS k FROM docs",
    "SELECT path, regexp_extract_all(text, 'import (\\w+)', 1) AS mods FROM chunks ORDER BY path",
    "SELECT upper(substr(path, 1, 3)), length(text), lower(text) LIKE '%x%' FROM chunks",
    "SELECT count(DISTINCT doc_id), sum(n_tokens), string_agg(path, ',' ORDER BY path) FROM chunks",
    "SELECT path FROM docs QUALIFY rank() OVER (ORDER BY bytes DESC) = 1",
    "SELECT unnest(string_split(text, chr(10))) AS line FROM chunks LIMIT 5",
    "SELECT i, i * i FROM range(5) t(i) UNION ALL SELECT 10, 100 ORDER BY 1",
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5) SELECT sum(i) FROM n",
    "SELECT list_transform([1, 2, 3], x -> x + 1) AS l, {'a': 1}.a AS s, CAST('7' AS INTEGER) AS c",
    "SELECT CASE WHEN n_lines BETWEEN 1 AND 4 THEN 'short' ELSE 'long' END, coalesce(NULL, path) FROM docs",
    "SELECT * FROM (VALUES (1, 'a'), (2, 'b')) v(k, s) JOIN docs ON v.k = docs.n_lines",
    "SELECT path FROM docs WHERE EXISTS (SELECT 1 FROM chunks c WHERE c.doc_id = docs.doc_id) "
    "AND regexp_matches(path, '\\.py$')",
    "SELECT COLUMNS('n_.*') FROM docs",
    "SELECT * EXCLUDE (text) FROM chunks",
    "DESCRIBE chunks",
    "SELECT max(len(path)), min(path), any_value(sha256), md5(path) FROM docs GROUP BY path",
]


@pytest.mark.parametrize("query", LEGIT)
def test_legitimate_model_sql_still_runs(corpus, query):
    rows = ContextView(corpus).sql(query)
    assert rows and all(isinstance(r, dict) for r in rows)


def test_legitimate_answers_are_right(corpus, source):
    view = ContextView(corpus)
    assert view.sql("SELECT repeat('-', 10) AS r, lpad('7', 3, '0'), format('{}-{}', 1, 2) AS f") == [
        {"r": "-" * 10, "lpad": "7".rjust(3, "0"), "f": "1-2"}]
    per_dir = view.sql(LEGIT[0])
    expected: dict[str, int] = {}
    for rel in FILES:
        expected[rel.split("/")[0]] = expected.get(rel.split("/")[0], 0) + 1
    assert {r["top"]: r["n"] for r in per_dir} == expected
    modules = {r["path"]: r["mods"] for r in view.sql(LEGIT[3])}
    for rel, text in FILES.items():
        assert modules[rel] == re.findall(r"import (\w+)", text)
    assert [int(v) for r in view.sql(LEGIT[9]) for v in r.values()] == [15]


REFUSED = [
    # SQL evaluated from a string, and catalog/setting/secret introspection through it.
    "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT current_setting(''allowed_paths'')'))",
    "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT * FROM duckdb_secrets()'))",
    "SELECT json_serialize_plan('SELECT * FROM duckdb_views()')",
    "SELECT * FROM query('SELECT 1')",
    "SELECT * FROM query_table('chunks')",
    # The view definitions hold shard paths / S3 URIs that context.stats hides.
    "SELECT sql FROM duckdb_views()",
    "SELECT sql FROM duckdb_views",
    "SELECT pg_get_viewdef('chunks')",
    "SELECT * FROM information_schema.views",
    "SELECT * FROM pragma_table_info('chunks')",
    "SELECT * FROM (WITH duckdb_views AS (SELECT 1) SELECT * FROM duckdb_views) t, duckdb_views",
    "WITH x AS (SELECT 1) SELECT * FROM (SELECT * FROM x), duckdb_settings()",
    "SELECT * FROM system.main.duckdb_views",
    "SELECT current_setting('memory_limit')",
    "SELECT getvariable('x')",
    "SELECT current_database(), current_schemas(true)",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM glob('*')",
    "SELECT * FROM read_text('x')",
    "SELECT * FROM read_parquet('x.parquet')",
    "SELECT * FROM 'x.parquet'",
    "SHOW TABLES",
    "SHOW ALL TABLES",
    "SELECT ?",
    "SELECT range(10000000000)",                     # one list value of 10^10 items
    "SELECT format(text) FROM chunks",               # a document's text as a format string
    "SELECT printf('%01000000000d', 1)",
    "EXPLAIN SELECT 1",
    "COPY (SELECT 1) TO 'x.csv'",
]


@pytest.mark.parametrize("query", REFUSED)
def test_allow_list_refuses_everything_else(corpus, corpus_dir, query):
    with pytest.raises(CorpusQueryError) as err:
        corpus.sql(query)
    message = str(err.value)
    assert "not allowed on the corpus" in message or "only read-only SELECT" in message, message
    assert str(corpus_dir) not in message and "shards/" not in message
    assert corpus.sql("SELECT count(*) AS n FROM docs").to_pylist() == [{"n": len(FILES)}]


class RowsSeen(QuerySession):
    """The real query session, recording how many rows a worker handed back to the host."""

    def __init__(self, pool) -> None:
        super().__init__(pool)
        self.rows: list[int] = []

    def sql(self, query, limit, timeout_s):
        table, cut = super().sql(query, limit, timeout_s)
        self.rows.append(table.num_rows)
        return table, cut


@pytest.mark.parametrize("prefix", ["-- c\n", "/* c */ ", "\n\n-- a\n-- b\n"])
def test_row_cap_is_applied_to_the_parsed_statement(corpus, prefix):
    """A leading comment skipped the old text wrapper: range(1e8) put 900 MB on the host."""
    view = ContextView(corpus, max_rows=10)
    view._queries = seen = RowsSeen(corpus.query_pool())
    rows = view.sql(prefix + "SELECT i FROM range(100000) t(i)")
    assert rows == [{"i": i} for i in range(10)]
    assert any("only the first 10 rows" in note for note in view.drain_notes())
    assert seen.rows == [11]      # DuckDB materialised the cap + 1, not 100,000 rows


# -- time --------------------------------------------------------------------------

SLOW_SCAN = "SELECT count(*) FROM range(3000000000) t(i) WHERE hash(i) % 7 = 3"


def test_a_scan_stops_at_the_block_deadline_and_the_handle_goes_on(corpus):
    view = ContextView(corpus)
    view.set_deadline(time.monotonic() + 3)
    started = time.monotonic()
    with pytest.raises(CorpusQueryError, match="exceeded its time limit"):
        view.sql(SLOW_SCAN)
    elapsed = time.monotonic() - started
    assert elapsed < 3 + 10, elapsed          # 3 s + grace (the machine is shared)
    view.set_deadline(None)
    assert view.sql("SELECT count(*) AS n FROM docs") == [{"n": len(FILES)}]
    # A spent deadline refuses at once instead of starting work.
    view.set_deadline(time.monotonic() - 1)
    with pytest.raises(CorpusQueryError, match="time limit"):
        view.grep("import")


@pytest.mark.timeout(120)
def test_statement_deadlines_share_one_thread_and_the_earliest_fires_first(monkeypatch):
    import duckdb

    from rlm_ray.corpus.duck import bounded

    con = duckdb.connect()
    quick, slow, other = con.cursor(), con.cursor(), con.cursor()
    with bounded(quick, 30):
        quick.execute("SELECT 1").fetchall()
    started_threads = []
    start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start",
                        lambda self: (started_threads.append(self.name), start(self))[1])
    for i in range(200):
        with bounded(quick, 30):
            assert quick.execute(f"SELECT {i} AS i").fetchall() == [(i,)]
    assert started_threads == []   # no thread (or timer) per statement
    monkeypatch.undo()
    # A later, shorter deadline is not held up behind an earlier, longer one.
    outcome = {}

    def long_one():
        try:
            with bounded(slow, 6):
                slow.execute(SLOW_SCAN).fetchall()
        except CorpusQueryError as exc:
            outcome["long"] = (str(exc), time.monotonic())
    runner = threading.Thread(target=long_one)
    runner.start()
    time.sleep(0.2)
    with pytest.raises(CorpusQueryError, match="exceeded its time limit"):
        with bounded(other, 1):
            other.execute(SLOW_SCAN).fetchall()
    short_ended = time.monotonic()
    runner.join(timeout=60)
    message, long_ended = outcome["long"]
    assert "exceeded its time limit" in message
    assert short_ended < long_ended, "the 1 s deadline waited for the 6 s one"


@pytest.mark.timeout(120)
def test_workspace_block_with_a_slow_host_call_ends_at_its_limit(corpus):
    """End to end through the sandbox: a 3 s block whose host call would scan for
    ~50 s ends at 3 s + grace, and the REPL serves the next block."""
    from rlm_ray.engine.workspace import Workspace

    workspace = Workspace(context=None, view=ContextView(corpus), host_functions={},
                          sandbox_opts={"timeout_s": 30})
    try:
        started = time.monotonic()
        block = workspace.run(f"rows = context.sql({SLOW_SCAN!r})", timeout_s=3)
        elapsed = time.monotonic() - started
        # Whichever deadline fires first names it: DuckDB's interrupt ("query exceeded
        # its time limit") or the sandbox's clock, which counts host-call time too.
        assert re.search(r"time limit|ran longer than 3", block.error or ""), block
        assert elapsed < 3 + 10, elapsed
        nxt = workspace.run("print(len(context.grep('import', limit=1000)))", timeout_s=30)
        assert nxt.error is None, nxt.error
        assert int(nxt.output.strip()) == len(scan_lines(FILES, "import", re.IGNORECASE))
    finally:
        workspace.close()


# -- memory -------------------------------------------------------------------------

MEMORY_CAP_MB = 256


def test_memory_attacks_stay_under_the_duckdb_cap(corpus_dir):
    """string_agg of 3 GB took the old host to 9.9 GB RSS: the child (the host:
    its queries run in its query workers) is killed if its RSS grows past the
    configured cap + 200 MB."""
    out, peak, ready = run_child(f"""
        from rlm_ray.corpus import Corpus, CorpusQueryError
        from rlm_ray.engine.context_view import ContextView
        view = ContextView(Corpus.open({str(corpus_dir)!r}))
        view.sql("SELECT 1")
        print("ready", flush=True)
        for attack in ["SELECT string_agg(repeat('x', 1000000), '') FROM range(3000)",   # the issue's
                       # Values under the size guard, 3 GB in total: DuckDB's memory limit.
                       "SELECT string_agg(repeat('x', 30000), '') FROM range(100000)",
                       "SELECT list(repeat('x', 30000)) FROM range(100000)",
                       # Vectors' string heaps are outside DuckDB's memory limit:
                       # amplifying calls are size-guarded instead.
                       "SELECT repeat('x', 10000000) AS big FROM range(300)",
                       "SELECT lpad('x', 1000000000, ' ') FROM range(50)",
                       "SELECT list_resize([1], 100000000) FROM range(50)"]:
            try:
                rows = view.sql(attack)
                print("ROWS", len(rows), sum(len(str(v)) for r in rows for v in r.values()))
            except CorpusQueryError as exc:
                print("REFUSED", str(exc).splitlines()[0])
        """, env={"RLM_RAY_DUCKDB_MEMORY_MB": str(MEMORY_CAP_MB), "RLM_RAY_DUCKDB_TEMP_MB": "0"},
        kill_above_mb=MEMORY_CAP_MB + 200)
    print(f"peak RSS {peak:.0f} MB, {peak - ready:.0f} MB above the child's start ({ready:.0f} MB)")
    results = [line for line in out.splitlines() if line.startswith(("ROWS", "REFUSED"))]
    assert len(results) == 6, out
    assert all(r.startswith("REFUSED") and ("used more than" in r or "would build a value" in r)
               for r in results), out
    assert sum(f"used more than {MEMORY_CAP_MB} MB of memory (DuckDB's limit)" in r
               for r in results) == 2, out
    assert peak - ready < MEMORY_CAP_MB + 200


# -- grep ---------------------------------------------------------------------------

def test_grep_never_backtracks_on_an_untrusted_pattern(corpus_dir):
    """`import|(\\w|\\w)+!!` passes the RE2 chunk filter, then hung Python `re` for 90+ s."""
    out, _, _ = run_child(f"""
        import json
        from rlm_ray.corpus import Corpus
        corpus = Corpus.open({str(corpus_dir)!r})
        print("ready", flush=True)
        hits = corpus.grep(r"import|(\\w|\\w)+!!", limit=None, timeout_s=20)
        print("HITS", json.dumps(sorted([h["path"], h["line"]] for h in hits)))
        """, timeout_s=45)
    hits = json.loads(out.split("HITS", 1)[1])
    assert {tuple(h) for h in hits} == scan_lines(FILES, "import", re.IGNORECASE)


@pytest.mark.parametrize("pattern", [r"\bimport\b", r"^import", r"w{40}", r"(import|from) \w+$", "IMPORT!"])
def test_grep_matches_gnu_grep(corpus, source, pattern):
    run = subprocess.run(["grep", "-rnIiE", pattern, "."], cwd=source, capture_output=True, text=True)
    expected = {(p.removeprefix("./"), int(n)) for p, n, _ in
                (line.split(":", 2) for line in run.stdout.splitlines())}
    assert expected
    assert {(h["path"], h["line"]) for h in corpus.grep(pattern, limit=None)} == expected


def test_grep_counts_a_line_split_across_chunks_once_even_with_a_limit(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    text = "tok " * 3000 + "\n" + "".join(f"tok line {i}\n" for i in range(2, 6))
    (src / "long.txt").write_text(text)
    ingest([str(src)], str(tmp_path / "c"), chunk_tokens=100)
    corpus = Corpus.open(str(tmp_path / "c"))
    assert corpus.manifest["chunks"] > 3          # the first line really spans chunks
    expected = sorted(line for _, line in scan_lines({"long.txt": text}, "tok"))
    assert [h["line"] for h in corpus.grep("tok", limit=3)] == expected[:3]
    assert [h["line"] for h in corpus.grep("tok", limit=None)] == expected
