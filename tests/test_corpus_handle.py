"""The Corpus handle over a real codebase (a stdlib slice): answers derived
from the files with pathlib/re/ast, never hard-coded; SQL confinement."""
from __future__ import annotations

import ast
import hashlib
import pickle
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixtures.codebase import scan_lines, text_files
from rlm_ray.corpus import Corpus, CorpusQueryError, ingest
from rlm_ray.corpus.duck import connect


@pytest.fixture(scope="module")
def corpus_dir(stdlib_subset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("handle") / "corpus"
    ingest([str(stdlib_subset)], str(out), chunk_tokens=500)
    return out


@pytest.fixture(scope="module")
def corpus(corpus_dir) -> Corpus:
    return Corpus.open(str(corpus_dir))


@pytest.fixture(scope="module")
def files(stdlib_subset) -> dict[str, str]:
    return text_files(stdlib_subset)


def test_docs_match_the_files(corpus, stdlib_subset):
    expected = {p.relative_to(stdlib_subset).as_posix(): p.read_bytes()
                for p in stdlib_subset.rglob("*") if p.is_file() and p.stat().st_size
                and b"\0" not in p.read_bytes()[:8192]}
    docs = {d["path"]: d for d in corpus.docs()}
    assert set(docs) == set(expected)
    for path, data in expected.items():
        text = data.decode("utf-8", "replace")
        assert docs[path]["sha256"] == hashlib.sha256(data).hexdigest()
        assert docs[path]["bytes"] == len(data)
        assert docs[path]["n_lines"] == len(text.split("\n")) - text.endswith("\n")
    assert len(corpus.docs(limit=3)) == 3 and "shard" not in corpus.docs(limit=1)[0]


def test_len_and_stats_are_the_manifest_numbers(corpus):
    total = corpus.sql("SELECT sum(n_tokens) AS t, count(*) AS c FROM chunks").to_pylist()[0]
    assert len(corpus) == total["t"] == corpus.stats["tokens"]
    assert corpus.stats["chunks"] == total["c"]
    assert corpus.stats["documents"] == corpus.sql("SELECT count(*) AS n FROM docs").to_pylist()[0]["n"]


@pytest.mark.parametrize("pattern, kwargs, flags", [
    (r"def \w+_error\(", {}, re.IGNORECASE),
    (r"^class \w+\(Exception\):", {}, re.IGNORECASE),
    (r"Header", {"case": True}, 0),
    ("except (", {"regex": False}, re.IGNORECASE),    # literal: the ( is not a group
    (r"\bRFC ?\d{3,4}\b", {}, re.IGNORECASE),
])
def test_grep_finds_what_a_line_scan_finds(corpus, files, pattern, kwargs, flags):
    body = re.escape(pattern) if kwargs.get("regex") is False else pattern
    expected = scan_lines(files, body, flags)
    found = corpus.grep(pattern, limit=None, **kwargs)
    assert {(m["path"], m["line"]) for m in found} == expected
    assert expected   # each pattern really occurs
    for m in found[:20]:
        assert m["text"] == files[m["path"]].split("\n")[m["line"] - 1][:200] or len(m["text"]) <= 202


def test_grep_limit_returns_the_first_matches_in_path_order(corpus, files):
    expected = sorted(scan_lines(files, r"import"))
    found = corpus.grep("import", limit=7)
    assert [(m["path"], m["line"]) for m in found] == expected[:7]


def test_grep_long_lines_give_short_excerpts(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "min.js").write_text("var a=1;" * 2000 + "needle();" + "var b=2;" * 2000 + "\nend\n")
    ingest([str(src)], str(tmp_path / "c"), chunk_tokens=100)
    [match] = Corpus.open(str(tmp_path / "c")).grep("needle")
    assert match["line"] == 1 and "needle" in match["text"] and len(match["text"]) <= 202


def test_read_slices_lines_and_round_trips_documents(corpus, files):
    for path in ("json/decoder.py", "difflib.py", "email/_header_value_parser.py"):
        text = files[path]
        lines = text.split("\n")
        assert corpus.read(path) == text
        assert corpus.read(path, 10, 20) == "\n".join(lines[10:20]) + "\n"
        assert corpus.read(path, len(lines) - 3) == "\n".join(lines[-3:])
        assert corpus.read(path, -2) == "\n".join(lines[-3:])
        assert corpus.read(path, 5, 5) == ""
    doc_id = next(d["doc_id"] for d in corpus.docs() if d["path"] == "shlex.py")
    assert corpus.read(doc_id, 0, 3) == "".join(files["shlex.py"].splitlines(keepends=True)[:3])


def test_unknown_document_suggests_close_paths(corpus):
    with pytest.raises(CorpusQueryError, match=r"unknown document 'json/decodr.py'.*json/decoder.py"):
        corpus.read("json/decodr.py")


@pytest.mark.parametrize("call, message", [
    (lambda c: c.read("shlex.py", "1"), "integer line indices"),
    (lambda c: c.grep(""), "non-empty pattern"),
    (lambda c: c.grep("ok", limit=-1), "non-negative"),
    (lambda c: c.grep("(unclosed"), "invalid regular expression"),
    (lambda c: c.grep(r"(?<=look)behind"), "not supported by RE2"),        # valid in Python, not in RE2
    (lambda c: c.sql("SELEC nonsense"), "syntax error"),
    (lambda c: c.sql("SELECT no_such_column FROM chunks"), "no_such_column"),
])
def test_bad_queries_raise_clear_corpus_errors(corpus, call, message):
    with pytest.raises(CorpusQueryError, match=message):
        call(corpus)


def test_sql_answers_match_ast(corpus, stdlib_subset):
    # Modules under json/ defining at least one class, computed with ast...
    expected = sorted(
        p.relative_to(stdlib_subset).as_posix() for p in (stdlib_subset / "json").glob("*.py")
        if any(isinstance(n, ast.ClassDef) for n in ast.walk(ast.parse(p.read_text()))))
    # ...and by SQL over the chunks.
    got = corpus.sql("SELECT DISTINCT path FROM chunks WHERE path LIKE 'json/%' "
                     "AND regexp_matches(text, '(?m)^\\s*class \\w+') ORDER BY path")
    assert isinstance(got, pa.Table) and got.column("path").to_pylist() == expected
    described = corpus.sql("DESCRIBE chunks").column("column_name").to_pylist()
    assert described == ["doc_id", "path", "chunk_id", "start_line", "end_line", "text", "n_tokens", "sha256"]


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("outside")
    pq.write_table(pa.table({"secret": ["outside data"]}), d / "other.parquet")
    (d / "note.txt").write_text("outside\n")
    return d


REFUSED = [
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_parquet('{outside}/other.parquet')",
    "SELECT * FROM read_text('{corpus}/manifest.json')",
    "SELECT * FROM read_text('{corpus}/../note.txt')",
    "COPY (SELECT 1) TO '{outside}/x.csv'",
    "COPY chunks TO '{corpus}/copy.parquet'",
    "ATTACH '{outside}/x.db'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET threads = 1",
    "SET enable_external_access = true",
    "RESET lock_configuration",
    "PRAGMA threads = 1",
    "PRAGMA enable_profiling",
    "CREATE TABLE t AS SELECT 1",
    "DROP VIEW chunks",
    "SELECT 1; SELECT 2",
    "SELECT * FROM duckdb_secrets()",
    "SELECT current_setting('allowed_paths')",
    "SELECT * FROM query('SELECT * FROM read_text(''/etc/passwd'')')",
    "SELECT * FROM read_text('http://127.0.0.1:9/x')",
]


# Each refusal names its cause: DuckDB's permission/lock messages or our statement gate's.
CLEAR_REASONS = ("Permission Error", "disabled", "locked", "only read-only SELECT",
                 "exactly one SQL statement", "not allowed on the corpus")


@pytest.mark.parametrize("template", REFUSED)
def test_model_sql_cannot_leave_the_corpus(corpus, corpus_dir, outside, template):
    query = template.format(outside=outside, corpus=corpus_dir)
    with pytest.raises(CorpusQueryError) as err:
        corpus.sql(query)
    assert any(reason in str(err.value) for reason in CLEAR_REASONS), str(err.value)
    assert not (outside / "x.csv").exists() and not (corpus_dir / "copy.parquet").exists()
    # The handle still answers afterwards.
    assert corpus.sql("SELECT count(*) AS n FROM docs").to_pylist()[0]["n"] == corpus.stats["documents"]


def test_duckdb_layer_alone_confines_even_without_the_statement_gate(corpus, corpus_dir, outside):
    """Defence in depth: the raw connection (no check_sql) refuses too."""
    shards = [str(corpus_dir / s["file"]) for s in corpus.manifest["shards"]]
    con = connect(str(corpus_dir), shards, str(corpus_dir / corpus.manifest["docs_file"]))
    assert con.execute("SELECT count(*) FROM chunks").fetchone()[0] == corpus.stats["chunks"]
    for query in ["SELECT * FROM read_text('/etc/passwd')", f"COPY (SELECT 1) TO '{outside}/y.csv'",
                  f"ATTACH '{outside}/y.db'", "INSTALL json", "LOAD httpfs", "SET threads = 1",
                  "SET enable_external_access = true", "PRAGMA threads = 1",
                  f"SELECT * FROM read_parquet('{outside}/other.parquet')"]:
        with pytest.raises(Exception, match="disabled|locked|Permission"):
            con.execute(query)
    assert not (outside / "y.csv").exists()
    con.close()


def test_handle_pickles_small_and_reopens_per_process(corpus):
    corpus.sql("SELECT 1")  # the original has a live connection
    blob = pickle.dumps(corpus)
    assert len(blob) < 50_000 and b"duckdb" not in blob.lower()
    copy = pickle.loads(blob)
    assert copy.uri == corpus.uri and copy.manifest == corpus.manifest
    assert copy.grep("class JSONDecodeError") == corpus.grep("class JSONDecodeError")


def test_threads_can_share_one_handle(corpus, files):
    paths = sorted(files)[:24]
    with ThreadPoolExecutor(6) as pool:
        texts = list(pool.map(corpus.read, paths))
        counts = list(pool.map(lambda p: corpus.sql(
            f"SELECT count(*) AS n FROM chunks WHERE path = '{p}'").to_pylist()[0]["n"], paths))
    assert texts == [files[p] for p in paths]
    assert all(n >= 1 for n in counts)
