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
