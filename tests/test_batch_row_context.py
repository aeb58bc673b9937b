"""Per-row text contexts in a batch: a queries file whose rows carry their own
`context` (text) or `context_file` (a local path or an s3:// object), run end
to end through real Ray, the real engine and sandbox, the provider SIMULATOR
over HTTP and moto S3. Each row's context holds a different secret code for
the same key, so an answer proves which text the row's REPL was given.
"""
from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from rlm_ray.batch.queries import load_queries
from rlm_ray.batch.tables import read_run
from rlm_ray.cli import main as cli_main
from rlm_ray.errors import UserError

SIM_MODEL = "openai/sim/rlm-policy"
QUESTION = "What is the secret code for Juniper?"


def haystack(code: str, filler_lines: int = 300) -> str:
    """A report with one needle line in the middle of distractor lines."""
    lines = [f"line {i}: the weather log notes {i % 7} clouds over the harbour"
             for i in range(filler_lines)]
    lines.insert(filler_lines // 2, f"Memo: the secret code for Juniper is {code}.")
    return "\n".join(lines) + "\n"


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run_cli(*args: str) -> int:
    return cli_main(["run", *args, "--no-progress", "--max-iterations", "8"])


def answers_of(out: Path) -> dict[str, dict]:
    return {r["query_id"]: r for r in read_run(str(out)).answers.to_pylist()}


@pytest.mark.timeout(600)
def test_rows_with_their_own_context_local_and_s3_answer_from_their_own_text(
        ray_session, sim, s3_bucket, tmp_path, capsys):
    server = sim()
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "b.txt").write_text(haystack("BRAVO-22"))
    absolute = tmp_path / "elsewhere.txt"
    absolute.write_text(haystack("DELTA-44"))
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="ctx/c.txt",
                                  Body=haystack("CHARLIE-33").encode())
    queries = write_jsonl(tmp_path / "q.jsonl", [
        {"query_id": "inline", "question": QUESTION, "context": haystack("ALPHA-11"),
         "answer": "ALPHA-11"},
        {"query_id": "relative", "question": QUESTION, "context_file": "reports/b.txt",
         "answer": "BRAVO-22"},
        {"query_id": "s3", "question": QUESTION, "context_file": f"s3://{s3_bucket}/ctx/c.txt",
         "answer": "CHARLIE-33"},
        {"query_id": "absolute", "question": QUESTION, "context_file": str(absolute),
         "answer": "DELTA-44"},
    ])
    out = tmp_path / "results"
    # No CORPUS: every row brings its own text.
    code = run_cli("--queries", queries, "--out", str(out), "--model", SIM_MODEL,
                   "--api-base", server.base_url, "--concurrency", "4")
    err = capsys.readouterr().err
    assert code == 0, err
    got = answers_of(out)
    assert {q: (r["status"], r["answer"]) for q, r in got.items()} == {
        "inline": ("ok", "ALPHA-11"), "relative": ("ok", "BRAVO-22"),
        "s3": ("ok", "CHARLIE-33"), "absolute": ("ok", "DELTA-44")}, err
    # The tables identify each context (size, hash) without copying it.
    assert got["inline"]["context_chars"] == len(haystack("ALPHA-11"))
    assert len({r["context_sha256"] for r in got.values()}) == 4
    # The REPL had a str: the model's code read it as one (the needle policy's str branch).
    steps = read_run(str(out)).steps.to_pylist()
    assert all(s["error"] is None or "AttributeError" not in s["error"] for s in steps)

    # Resume: one more row (and the first row's text changed) in the same file. Finished
    # ids are skipped (resume is by query_id, as for a changed question); the changed
    # text is detectable through context_sha256. Only the new row calls the model.
    rows = [json.loads(line) for line in Path(queries).read_text().splitlines()]
    rows[0]["context"] = haystack("ALPHA-99")
    rows.append({"query_id": "new", "question": QUESTION, "context": haystack("ECHO-55")})
    write_jsonl(Path(queries), rows)
    before = server.stats()["requests"]
    code = run_cli("--queries", queries, "--out", str(out), "--model", SIM_MODEL,
                   "--api-base", server.base_url)
    printed = capsys.readouterr()
    assert code == 0, printed.err
    again = answers_of(out)
    assert (again["new"]["status"], again["new"]["answer"]) == ("ok", "ECHO-55")
    assert {q: again[q]["answer"] for q in got} == {q: got[q]["answer"] for q in got}
    assert again["inline"]["context_sha256"] == got["inline"]["context_sha256"]
    new_calls = server.stats()["requests"] - before
    assert 0 < new_calls <= again["new"]["llm_calls"]


@pytest.mark.timeout(600)
def test_mixed_file_over_a_corpus_and_bad_contexts_become_row_errors(
        ray_session, sim, s3_bucket, tmp_path, capsys):
    from rlm_ray.corpus import ingest

    server = sim()
    docs = write_jsonl(tmp_path / "docs.jsonl", [
        {"path": "memo.txt", "text": haystack("CORPUS-77")},
        {"path": "other.txt", "text": "nothing to see here\n" * 50}])
    corpus = tmp_path / "corpus"
    ingest([docs], str(corpus))
    (tmp_path / "big.txt").write_text(haystack("TOO-BIG", filler_lines=3000))   # ~180 KB
    (tmp_path / "ok.txt").write_text(haystack("FILE-66"))                       # ~18 KB
    queries = write_jsonl(tmp_path / "q.jsonl", [
        {"query_id": "corpus-row", "question": QUESTION},
        {"query_id": "file-row", "question": QUESTION, "context_file": "ok.txt"},
        {"query_id": "too-big", "question": QUESTION, "context_file": "big.txt"},
        {"query_id": "too-big-inline", "question": QUESTION,
         "context": haystack("INLINE-BIG", filler_lines=3000)},
        {"query_id": "missing", "question": QUESTION, "context_file": "nowhere/gone.txt"},
        {"query_id": "missing-s3", "question": QUESTION,
         "context_file": f"s3://{s3_bucket}/no/such.txt"},
    ])
    out = tmp_path / "results"
    code = run_cli(str(corpus), "--queries", queries, "--out", str(out), "--model", SIM_MODEL,
                   "--api-base", server.base_url, "--max-context-mib", "0.0625")   # 64 KiB
    err = capsys.readouterr().err
    assert code == 0, err   # bad rows are rows, not a dead job
    got = answers_of(out)
    assert (got["corpus-row"]["status"], got["corpus-row"]["answer"]) == ("ok", "CORPUS-77"), err
    assert got["corpus-row"]["context_sha256"] is None
    assert (got["file-row"]["status"], got["file-row"]["answer"]) == ("ok", "FILE-66")
    for query_id, words in [("too-big", ("big.txt", "over the per-row limit of 65,536 bytes")),
                            ("too-big-inline", ("context is", "over the per-row limit")),
                            ("missing", ("nowhere/gone.txt", "not found")),
                            ("missing-s3", ("s3://", "no/such.txt", "not found"))]:
        row = got[query_id]
        assert (row["status"], row["answer"], row["llm_calls"]) == ("error", None, 0), row
        assert all(w in row["error"] for w in words) and "\n" not in row["error"], row["error"]
        assert "Traceback" not in row["error"]


def test_context_and_context_file_on_one_row_is_a_one_line_error(tmp_path, capsys):
    queries = write_jsonl(tmp_path / "q.jsonl", [
        {"query_id": "a", "question": QUESTION, "context": "x", "context_file": "x.txt"}])
    with pytest.raises(UserError, match=r"row 1 \(query_id a\): give `context` or "
                                        r"`context_file`, not both"):
        load_queries(queries)
    code = run_cli("--queries", queries, "--out", str(tmp_path / "r"), "--model", "sim")
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") <= 1 and "not both" in err.splitlines()[-1]
    assert not (tmp_path / "r" / "answers").exists()


def test_rows_without_context_and_no_corpus_is_a_one_line_error(tmp_path, capsys):
    queries = write_jsonl(tmp_path / "q.jsonl", [
        {"query_id": "has", "question": QUESTION, "context": "some text"},
        {"query_id": "bare-1", "question": QUESTION},
        {"query_id": "bare-2", "question": QUESTION, "context_file": "  "}])
    code = run_cli("--queries", queries, "--out", str(tmp_path / "r"), "--model", "sim")
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert lines[-1] == ("rlm-ray: error: 2 question(s) have no `context` or `context_file` and "
                         "no CORPUS was given (bare-1, bare-2): give a CORPUS, or a context "
                         "on every row")
    assert not (tmp_path / "r" / "answers").exists()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_csv_and_parquet_files_carry_contexts_with_paths_resolved_against_their_folder(
        tmp_path, suffix):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    folder = tmp_path / "batch"
    folder.mkdir()
    table = pa.table({"query_id": ["a", "b", "c"], "question": [QUESTION] * 3,
                      "context": ["inline text", None, None],
                      "context_file": [None, "docs/b.txt", None]})
    path = folder / f"q{suffix}"
    (pq.write_table if suffix == ".parquet" else pcsv.write_csv)(table, str(path))
    by_id = {q.query_id: q.text_context for q in load_queries(str(path)).queries}
    assert by_id["a"].text == "inline text" and by_id["a"].uri is None
    assert by_id["b"].uri == str(folder / "docs" / "b.txt") and by_id["b"].text is None
    assert by_id["c"] is None


def test_a_pipeline_date_keeps_each_rows_context_when_it_rewrites_the_queries(tmp_path):
    """run_pipeline writes the selected rows into the date's partition: a relative
    `context_file` must still name the same file from there, inline text stay inline."""
    from rlm_ray.batch.pipeline import _write_queries

    (tmp_path / "spec" / "reports").mkdir(parents=True)
    source = write_jsonl(tmp_path / "spec" / "q.jsonl", [
        {"query_id": "a", "question": QUESTION, "context": "line one\nline two"},
        {"query_id": "b", "question": QUESTION, "context_file": "reports/b.txt"},
        {"query_id": "c", "question": QUESTION, "context_file": "s3://bucket/c.txt"},
        {"query_id": "d", "question": QUESTION, "max_iterations": 3}])
    queries = load_queries(source).queries
    rewritten = tmp_path / "out" / "run_date=2026-01-01" / "queries.jsonl"
    _write_queries(queries, str(rewritten))
    again = load_queries(str(rewritten)).queries
    assert [(q.query_id, q.text_context, q.options) for q in again] == \
        [(q.query_id, q.text_context, q.options) for q in queries]
    assert again[1].text_context.uri == str(tmp_path / "spec" / "reports" / "b.txt")


def test_dry_run_without_a_corpus_counts_the_rows_with_their_own_context(tmp_path, capsys):
    queries = write_jsonl(tmp_path / "q.jsonl", [
        {"query_id": "a", "question": QUESTION, "context": "text"},
        {"query_id": "b", "question": QUESTION, "context_file": "b.txt"}])
    code = run_cli("--queries", queries, "--out", str(tmp_path / "o"), "--dry-run",
                   "--model", SIM_MODEL, "--api-base", "http://127.0.0.1:9/v1")
    plan = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines()[1:])
    assert code == 0
    assert (plan["corpus"], plan["rows_with_own_context"], plan["questions_to_run"]) == \
        ("none", "2", "2")
    assert not (tmp_path / "o").exists()


@pytest.mark.timeout(900)
def test_pipeline_reruns_a_row_whose_context_file_changed_and_only_it(
        ray_session, sim, tmp_path, capsys):
    """A scheduled pipeline with per-row contexts: a date after a row's text changed
    reruns that row (its recorded context_sha256 no longer matches), not the others."""
    import yaml

    from rlm_ray.batch.pipeline import load_spec, run_pipeline

    server = sim()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "memo.txt").write_text(haystack("CORPUS-77"))
    report = tmp_path / "report.txt"
    report.write_text(haystack("FILE-1"))
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "ctx", "sources": [str(tmp_path / "src")], "corpus": str(tmp_path / "corpus"),
        "output": str(tmp_path / "out"), "model": SIM_MODEL, "api_base": server.base_url,
        "limits": {"concurrency": 3, "max_iterations": 8},
        "questions": [
            {"query_id": "corpus", "question": QUESTION},
            {"query_id": "inline", "question": QUESTION, "context": haystack("INLINE-1")},
            {"query_id": "file", "question": QUESTION, "context_file": str(report)}]}))
    spec = load_spec(str(spec_path))
    day1 = run_pipeline(spec, "2026-01-01")
    got = answers_of(Path(day1.partition))
    assert {q: (r["status"], r["answer"]) for q, r in got.items()} == {
        "corpus": ("ok", "CORPUS-77"), "inline": ("ok", "INLINE-1"), "file": ("ok", "FILE-1")}

    report.write_text(haystack("FILE-2"))
    day2 = run_pipeline(spec, "2026-01-02")
    assert (day2.selected, day2.total_questions) == (1, 3)
    again = answers_of(Path(day2.partition))
    assert {q: (r["status"], r["answer"]) for q, r in again.items()} == {"file": ("ok", "FILE-2")}
