"""Scheduled pipelines (jobs/pipeline.py) and the archive job, in-process
through their `main(argv)`: real Ray, ingest, engine and the SIMULATOR."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import yaml

from rlm_ray.batch.define_questions import define_questions
from rlm_ray.batch.tables import read_run

ROOT = Path(__file__).resolve().parents[1]


def _job(name: str):
    spec = importlib.util.spec_from_file_location(f"job_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture
def codebase(tmp_path, stdlib_dir) -> Path:
    src = tmp_path / "src"
    shutil.copytree(stdlib_dir / "json", src / "json",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(stdlib_dir / "textwrap.py", src / "textwrap.py")
    return src


def _spec(tmp_path: Path, codebase: Path, server, questions: list[dict], **extra) -> Path:
    spec = {"name": "nightly", "sources": [str(codebase)], "corpus": str(tmp_path / "corpus"),
            "output": str(tmp_path / "out"), "model": "openai/sim/rlm-policy",
            "api_base": server.base_url, "questions": questions,
            "limits": {"concurrency": 2, "max_iterations": 12}, **extra}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.timeout(900)
def test_pipeline_is_idempotent_per_date_and_reruns_only_changes(ray_session, sim, codebase,
                                                                 tmp_path, capsys):
    pipeline = _job("pipeline")
    server = sim()
    questions = define_questions(codebase, 4, seed=2)
    spec = _spec(tmp_path, codebase, server, questions)
    out = tmp_path / "out"

    assert pipeline.main([str(spec), "--date", "2026-01-01"]) == 0
    day1 = out / "run_date=2026-01-01"
    answers = read_run(str(day1)).answers
    assert answers.num_rows == 4 and set(answers.column("status").to_pylist()) == {"ok"}
    before, calls = _snapshot(out), server.stats()["requests"]

    # The same date again (a scheduler retry): no file changes, no model call.
    assert pipeline.main([str(spec), "--date", "2026-01-01"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert _snapshot(out) == before and server.stats()["requests"] == calls

    # The next day, nothing changed: nothing to answer, the date is still recorded.
    assert pipeline.main([str(spec), "--date", "2026-01-02"]) == 0
    assert "0 of 4 questions" in capsys.readouterr().out
    info = json.loads((out / "run_date=2026-01-02" / "run.json").read_text())
    assert info["status"] == "finished" and info["questions_total"] == 0
    assert server.stats()["requests"] == calls

    # Day 3: one question reworded, one added -> exactly those two run.
    changed = [dict(questions[0], question=questions[0]["question"].replace("Which", "which"))]
    extra = define_questions(codebase, 5, seed=2)[4:]
    spec = _spec(tmp_path, codebase, server, changed + questions[1:] + extra)
    assert pipeline.main([str(spec), "--date", "2026-01-03"]) == 0
    day3 = read_run(str(out / "run_date=2026-01-03")).answers
    assert sorted(day3.column("query_id").to_pylist()) == sorted(
        [questions[0]["query_id"], extra[0]["query_id"]])

    # Day 4: the corpus changed (a new file) -> every question is rerun.
    (codebase / "extra_module.py").write_text("def brand_new_function():\n    return 1\n")
    assert pipeline.main([str(spec), "--date", "2026-01-04"]) == 0
    assert read_run(str(out / "run_date=2026-01-04")).answers.num_rows == 5

    # rerun: all answers every question even when nothing changed.
    spec = _spec(tmp_path, codebase, server, questions, rerun="all")
    assert pipeline.main([str(spec), "--date", "2026-01-05"]) == 0
    assert read_run(str(out / "run_date=2026-01-05")).answers.num_rows == 4


def test_pipeline_spec_errors_are_one_line(tmp_path, capsys):
    pipeline = _job("pipeline")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsources: [a]\ncorpus: c\noutput: o\nmodel: sim\nquestions: q.jsonl\n"
                   "rerun: sometimes\n")
    assert pipeline.main([str(bad)]) == 2
    assert "rerun must be one of changed, all" in capsys.readouterr().err
    bad.write_text("name: x\ncolour: red\n")
    assert pipeline.main([str(bad)]) == 2
    assert "unknown key(s) colour" in capsys.readouterr().err
    assert pipeline.main([str(tmp_path / "nope.yaml")]) == 2
    assert pipeline.main([str(ROOT / "jobs" / "specs" / "example.yaml"), "--date", "01/02"]) == 2


def test_example_spec_loads():
    from rlm_ray.batch.pipeline import load_spec

    spec = load_spec(str(ROOT / "jobs" / "specs" / "example.yaml"))
    assert spec.model == "sim" and spec.rerun == "changed" and len(spec.questions) == 3


@pytest.mark.timeout(600)
def test_archive_job_over_jsonl_documents(ray_session, sim, tmp_path, capsys):
    archive = _job("archive_qa")
    docs = tmp_path / "docs.jsonl"
    lines = [{"path": f"doc-{i}.txt", "text": f"Filler text number {i}.\n" * 20} for i in range(5)]
    lines[3]["text"] += "The secret code for ORCHID is 4417.\n"
    docs.write_text("".join(json.dumps(d) + "\n" for d in lines))
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"query_id": "needle", "answer": "4417",
                                   "question": "What is the secret code for ORCHID?"}) + "\n")
    server = sim()
    out = tmp_path / "results"
    assert archive.main([str(docs), "--corpus", str(tmp_path / "corpus"), "--queries",
                         str(queries), "--out", str(out), "--model", "openai/sim/rlm-policy",
                         "--api-base", server.base_url, "--concurrency", "1"]) == 0
    [row] = read_run(str(out)).answers.to_pylist()
    assert row["status"] == "ok" and row["normalized_match"] is True
    printed = capsys.readouterr()
    assert "1/1 (100.0%)" in printed.out and "[rlm-ray batch]" in printed.err
