"""Queries files, result tables (local and S3), resume bookkeeping, scoring."""
from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlm_ray import storage
from rlm_ray.batch import scoring
from rlm_ray.batch.queries import load_queries
from rlm_ray.batch.tables import (ANSWERS, FinishedQuestion, TableWriter, finished_statuses,
                                  read_run)
from rlm_ray.errors import UserError


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_queries_in_all_three_formats(tmp_path):
    rows = [{"query_id": "007", "question": "Q one?", "answer": "a.py", "max_iterations": 5},
            {"query_id": "8", "question": "Q two?"}]
    jsonl = _write(tmp_path / "q.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    csv = _write(tmp_path / "q.csv", 'query_id,question,answer,max_iterations\n'
                                     '007,"Q one?",a.py,5\n8,"Q two?",,\n')
    parquet = str(tmp_path / "q.parquet")
    pq.write_table(pa.table({"query_id": ["007", "8"], "question": ["Q one?", "Q two?"],
                             "answer": ["a.py", None], "max_iterations": [5, None]}), parquet)
    for path in (jsonl, csv, parquet):
        qf = load_queries(path)
        assert [q.query_id for q in qf.queries] == ["007", "8"], path
        assert qf.queries[0].expected == "a.py" and qf.queries[1].expected is None
        assert qf.queries[0].options == {"max_iterations": 5} and qf.queries[1].options == {}
        assert len(qf.sha256) == 64


@pytest.mark.parametrize("text, message", [
    ('{"query_id": "a", "question": "x"}\n{"query_id": "a", "question": "y"}\n'
     '{"query_id": "b", "question": "z"}\n{"query_id": "b", "question": "w"}\n',
     "duplicate query_id(s): a, b"),
    ('{"question": "x"}\n', "lacks required column(s) query_id"),
    ('{"query_id": "a", "question": ""}\n', "empty question"),
    ('{"query_id": "a", "question": "x", "max_depth": "deep"}\n', "max_depth must be a int"),
    ('not json\n', "line 1 is not valid JSON"),
    ('\n', "has no questions"),
])
def test_bad_queries_are_one_line_user_errors(tmp_path, text, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_queries(_write(tmp_path / "q.jsonl", text))


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="must end in one of"):
        load_queries(str(tmp_path / "q.txt"))
    with pytest.raises(UserError, match="not found"):
        load_queries(str(tmp_path / "missing.jsonl"))


def _finished(query_id: str, status: str = "ok", answer: str = "x", minute: int = 0):
    when = dt.datetime(2026, 1, 1, 0, minute, tzinfo=dt.timezone.utc)
    return FinishedQuestion(
        answer={"query_id": query_id, "question": f"q {query_id}", "answer": answer,
                "status": status, "finished_at": when, "started_at": when},
        calls=[{"query_id": query_id, "call_id": f"{query_id}-root", "kind": "root", "depth": 0}],
        steps=[{"query_id": query_id, "call_id": f"{query_id}-root", "iteration": 1,
                "code": "print(1)", "output": "1"}])


def _roundtrip(out_uri: str) -> None:
    writer = TableWriter(out_uri, flush_every=2, flush_s=3600)
    writer.add(_finished("a"))
    assert not writer.maybe_flush()           # one pending < flush_every
    writer.add(_finished("b", status="error", answer=None))
    assert writer.maybe_flush()
    # A retry of b later supersedes its error row; its old calls/steps disappear.
    writer.add(_finished("b", answer="fixed", minute=5))
    writer.flush()
    run = read_run(out_uri)
    assert run.answers.schema == ANSWERS
    assert run.answers.column("query_id").to_pylist() == ["a", "b"]
    assert run.answers.column("answer").to_pylist() == ["x", "fixed"]
    assert sorted(run.calls.column("query_id").to_pylist()) == ["a", "b"]
    assert sorted(run.steps.column("query_id").to_pylist()) == ["a", "b"]
    assert finished_statuses(out_uri) == {"a": "ok", "b": "ok"}


def test_tables_roundtrip_local(tmp_path):
    _roundtrip(str(tmp_path / "results"))


def test_tables_roundtrip_s3(s3_bucket):
    _roundtrip(f"s3://{s3_bucket}/runs/one")


def test_uncommitted_parts_are_invisible(tmp_path):
    """A crash after calls/steps were written but before answers: nothing shows."""
    out = str(tmp_path / "results")
    writer = TableWriter(out)
    writer.add(_finished("a"))
    writer.flush()
    orphan = storage.join(out, "calls", "part-99999999T000000-deadbeef.parquet")
    storage.write_bytes_atomic(orphan, storage.read_bytes(
        storage.list_prefix(storage.join(out, "calls"))[0].uri))
    (tmp_path / "results" / "answers" / ".tmp-x-part-1.parquet").write_bytes(b"half")
    run = read_run(out)
    assert run.calls.num_rows == 1 and run.answers.num_rows == 1
    assert read_run(str(tmp_path / "nothing")).answers.num_rows == 0


@pytest.mark.parametrize("answer, expected, exact, normal", [
    ("a.py", "a.py", True, True),
    ("A.py.", "a.py", False, True),
    ("b.py, a.py", "a.py,b.py", False, True),
    ("  42 ", "42", True, True),
    ("u1-u2, u0-u3", "u0-u3, u1-u2", False, True),
    ("a.py", "b.py", False, False),
    (None, "b.py", False, False),
    ("x", None, None, None),
])
def test_scoring(answer, expected, exact, normal):
    assert scoring.exact_match(answer, expected) is exact
    assert scoring.normalized_match(answer, expected) is normal


def test_f1_over_list_items():
    assert scoring.f1("a, b", "a, b") == 1.0
    assert scoring.f1("a, c", "a, b") == pytest.approx(0.5)
    assert scoring.f1("", "a") == 0.0
