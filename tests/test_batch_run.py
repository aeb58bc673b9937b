"""Batches end to end: real Ray (the session instance), the real engine and
sandbox, the provider SIMULATOR over HTTP, result tables on disk and on S3.

The stdlib corpus here is the CPython standard library without its test
suites and site-packages (~3M tokens, ~800 modules): the whole tree with
tests triples ingest time without changing what the batch machinery does.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rlm_ray.batch.define_questions import (STDLIB_SKIP_DIRS, corpus_exclude, define_questions,
                                            write_jsonl)
from rlm_ray.batch.runner import run
from rlm_ray.batch.tables import STATUSES, read_run
from rlm_ray.cli import main as cli_main

SIM_MODEL = "openai/sim/rlm-policy"


@pytest.fixture(scope="module")
def stdlib_corpus(tmp_path_factory, stdlib_dir) -> str:
    from rlm_ray.corpus import ingest

    out = tmp_path_factory.mktemp("batch_corpus") / "stdlib"
    ingest([str(stdlib_dir)], str(out), exclude=corpus_exclude(STDLIB_SKIP_DIRS))
    return str(out)


def _queries(stdlib_dir: Path, path: Path, count: int, **kw) -> str:
    return str(write_jsonl(define_questions(stdlib_dir, count, skip_dirs=STDLIB_SKIP_DIRS, **kw),
                           path))


def _rlm(server, cache_uri: str | None) -> dict:
    from rlm_ray.llm.config import GatewayConfig

    return {"model": SIM_MODEL, "api_base": server.base_url, "max_iterations": 12,
            "gateway": GatewayConfig(api_base=server.base_url, cache_uri=cache_uri,
                                     cache_mode="auto" if cache_uri else "off")}


def _raw_answers(out: Path):
    """Every committed answers row, read straight from the Parquet parts (no dedup)."""
    parts = sorted((out / "answers").glob("part-*.parquet"))
    return [row for p in parts for row in pq.read_table(p).to_pylist()]


@pytest.mark.timeout(900)
def test_200_questions_all_terminal_and_accuracy_matches_a_recount(
        ray_session, sim, stdlib_corpus, stdlib_dir, tmp_path, capsys):
    queries = _queries(stdlib_dir, tmp_path / "q.jsonl", 200)
    server = sim()
    out = tmp_path / "results"
    summary = run(stdlib_corpus, queries, str(out), rlm=_rlm(server, str(out / "cache")),
                  concurrency=8, progress=False)
    rows = _raw_answers(out)
    assert len(rows) == 200 and len({r["query_id"] for r in rows}) == 200
    assert all(r["status"] in STATUSES for r in rows)
    assert summary.all_terminal and summary.ran == 200
    # The summary's accuracy is a recount of the table: recount it independently.
    assert summary.accuracy.scored == 200
    assert summary.accuracy.exact == sum(r["answer"] == r["expected"] for r in rows)
    assert summary.accuracy.normalized == sum(bool(r["normalized_match"]) for r in rows)
    assert summary.accuracy.normalized >= 190, Counter(r["status"] for r in rows)
    # Lineage: every answer that called a model has its root call in `calls`.
    tables = read_run(str(out))
    roots = {c["query_id"] for c in tables.calls.to_pylist() if c["kind"] == "root"}
    assert roots == {r["query_id"] for r in rows if r["llm_calls"]}
    assert tables.steps.num_rows >= 200
    # `show` prints the same recount.
    assert cli_main(["show", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{summary.accuracy.normalized}/200" in printed


def _alive_rlm_actors() -> list[dict]:
    """RLMActors alive in this session's cluster (any job), straight from the
    GCS: the session's Ray runs without a dashboard, so no state API."""
    from ray._private.state import actors

    return [a for a in actors(actor_state_name="ALIVE").values()
            if a["ActorClassName"] == "RLMActor"]


def _wait_no_actors(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive_rlm_actors() and time.monotonic() < deadline:
        time.sleep(0.5)


@pytest.mark.timeout(900)
def test_sigkilled_driver_resumes_with_every_question_once_and_nothing_paid_twice(
        ray_session, sim, stdlib_corpus, stdlib_dir, tmp_path):
    # Distinct answer modules: no two questions share a sub-call prompt, so
    # any repeated prompt at the simulator would be a call paid twice.
    queries = _queries(stdlib_dir, tmp_path / "q.jsonl", 16, seed=7, distinct_modules=True)
    server = sim(latency_ms=300)
    out = tmp_path / "results"
    command = [sys.executable, "-m", "rlm_ray.cli", "run", stdlib_corpus, "--queries", queries,
               "--out", str(out), "--model", SIM_MODEL, "--api-base", server.base_url,
               "--concurrency", "2", "--no-progress", "--lease-ttl", "5"]
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not list((out / "answers").glob("part-*.parquet")):
        assert first.poll() is None, "the batch ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    answered_before = {r["query_id"] for r in _raw_answers(out)}
    assert 0 < len(answered_before) < 16
    _wait_no_actors()  # the dead driver's actors are gone: nothing of run 1 still calls out
    before = server.stats()

    # The killed driver's lease blocks the folder until it expires (test_batch_lease.py).
    second = subprocess.run(command + ["--lease-wait", "120"], env=env, capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    after = server.stats()
    rows = _raw_answers(out)
    ids = [r["query_id"] for r in rows]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 16   # every question exactly once
    assert all(r["status"] == "ok" for r in rows)
    assert after["completions"] > before["completions"]         # run 2 did the remaining work
    # Paid calls are not paid again: only a call cut off in flight by the kill
    # (received by the simulator, never answered) may be sent once more.
    cut_off = before["requests"] - before["completions"]
    assert after["repeated_prompts"] - before["repeated_prompts"] <= cut_off, (before, after)
    assert "skipped (already finished)" in second.stdout


@pytest.mark.timeout(600)
def test_5xx_faults_and_a_429_storm_lose_no_question(ray_session, sim, stdlib_corpus,
                                                       stdlib_dir, tmp_path):
    queries = _queries(stdlib_dir, tmp_path / "q.jsonl", 16, seed=3)
    server = sim(latency_ms=20, fail_rate=0.1, faults=("500", "503"), seed=5)
    done = threading.Event()

    def storm_once_busy() -> None:   # a 4 s storm once the batch is really calling
        while not done.is_set() and server.stats()["requests"] < 15:
            time.sleep(0.1)
        if not done.is_set():
            server.storm(4, retry_after_s=1)

    stormer = threading.Thread(target=storm_once_busy, daemon=True)
    stormer.start()
    out = tmp_path / "results"
    try:
        summary = run(stdlib_corpus, queries, str(out), rlm=_rlm(server, None), concurrency=6,
                      progress=False)
    finally:
        done.set()
        stormer.join(timeout=10)
    rows = _raw_answers(out)
    assert sorted(r["query_id"] for r in rows) == sorted(f"define-{i:04d}" for i in range(16))
    assert all(r["status"] in STATUSES for r in rows) and summary.all_terminal
    stats = server.stats()
    assert stats["by_status"].get(429, 0) > 0
    assert stats["by_status"].get(500, 0) + stats["by_status"].get(503, 0) > 0
    assert summary.statuses["ok"] >= 14   # the gateway's retries absorb transient faults


def _kill_actors_while_running(kills: int, stop: threading.Event) -> list[int]:
    """SIGKILL this cluster's RLMActor processes (found through Ray's state
    API, never by process name), `kills` times."""
    killed: list[int] = []
    while len(killed) < kills and not stop.is_set():
        for actor in _alive_rlm_actors():
            pid = actor["Pid"]
            if pid and pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
        time.sleep(0.3)
    return killed


@pytest.mark.timeout(600)
def test_a_killed_actor_is_retried_without_counting_an_attempt(ray_session, sim, stdlib_corpus,
                                                               stdlib_dir, tmp_path):
    # A host's death is not charged to its questions (test_batch_hostloss.py has
    # the neighbours and the question that kills its host): even with one attempt
    # allowed, the question is answered on a fresh host.
    _wait_no_actors()
    queries = _queries(stdlib_dir, tmp_path / "q.jsonl", 1, seed=11)
    server = sim(latency_ms=1500)   # slow enough that the kill lands mid-question
    stop = threading.Event()
    killer = threading.Thread(target=_kill_actors_while_running, args=(1, stop), daemon=True)
    killer.start()
    out = tmp_path / "results"
    try:
        summary = run(stdlib_corpus, queries, str(out), rlm=_rlm(server, None), concurrency=1,
                      progress=False, max_attempts=1)
    finally:
        stop.set()
        killer.join(timeout=10)
    [row] = _raw_answers(out)
    assert row["status"] == "ok", row["error"]
    assert row["attempts"] == 1 and row["host_losses"] == 1
    assert summary.host_loss_retries == 1 and summary.retried_after_failure == 0


@pytest.mark.timeout(600)
def test_results_on_s3_and_a_rerun_pays_nothing(ray_session, sim, stdlib_corpus, stdlib_dir,
                                                tmp_path, s3_bucket):
    queries = _queries(stdlib_dir, tmp_path / "q.jsonl", 4, seed=13)
    server = sim()
    out = f"s3://{s3_bucket}/runs/first"
    args = ["run", stdlib_corpus, "--queries", queries, "--out", out, "--model", SIM_MODEL,
            "--api-base", server.base_url, "--concurrency", "2", "--no-progress"]
    assert cli_main(args) == 0
    first = server.stats()
    tables = read_run(out)
    assert tables.answers.num_rows == 4 and set(tables.answers.column("status").to_pylist()) == {"ok"}
    assert cli_main(args) == 0   # everything finished: skipped, no model call
    assert server.stats()["requests"] == first["requests"]
    from rlm_ray import storage

    assert storage.list_prefix(f"{out}/cache")
    info = storage.read_bytes(f"{out}/run.json").decode()
    assert '"status": "finished"' in info and "api_key" not in info


def test_bad_input_is_a_one_line_error(tmp_path, capsys, stdlib_corpus):
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"query_id": "a", "question": "x"}\n{"query_id": "a", "question": "y"}\n')
    code = cli_main(["run", stdlib_corpus, "--queries", str(dup), "--out", str(tmp_path / "o"),
                     "--model", SIM_MODEL, "--api-base", "http://127.0.0.1:9/v1"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"rlm-ray: error: queries file {dup} has duplicate query_id(s): a"
    assert not (tmp_path / "o").exists()


def test_dry_run_prints_plan_and_cost_without_calling_a_model(tmp_path, capsys, stdlib_corpus,
                                                              stdlib_dir):
    queries = _queries(stdlib_dir, tmp_path / "q.jsonl", 5)
    base = ["run", stdlib_corpus, "--queries", queries, "--out", str(tmp_path / "o"),
            "--dry-run", "--calls-per-question", "4", "--api-base", "http://127.0.0.1:9/v1"]
    assert cli_main(base + ["--model", SIM_MODEL]) == 0
    plan = capsys.readouterr().out
    assert "dry run" in plan and "expected_calls" in plan and "20" in plan
    assert "unknown" in plan                     # nobody priced the simulator
    assert cli_main(base + ["--model", "gpt-4o-mini"]) == 0
    priced = capsys.readouterr().out
    cost_line = next(line for line in priced.splitlines() if "estimated_cost_usd" in line)
    assert float(cost_line.split()[-1]) > 0
    assert not (tmp_path / "o").exists()         # nothing written, nothing called


@pytest.mark.timeout(600)
def test_bench_batch_prints_its_figures(ray_session, tmp_path, stdlib_dir, capsys):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(stdlib_dir / "json", src / "json", ignore=shutil.ignore_patterns("__pycache__"))
    assert cli_main(["bench", "batch", "--questions", "3", "--rpm", "600", "--latency-ms", "0",
                     "--concurrency", "2", "--source", str(src),
                     "--workdir", str(tmp_path / "bench")]) == 0
    out = capsys.readouterr().out
    for figure in ("questions/min", "rate-limit utilisation", "driver peak PSS", "terminal rows",
                   "PSS per question in flight (at the peak)"):
        assert figure in out
    assert "terminal rows" in out and " 3\n" in out


@pytest.mark.timeout(600)
def test_questions_in_flight_are_loops_in_one_host_actor_per_node(ray_session, sim, stdlib_subset,
                                                                   tmp_path):
    """Concurrency is questions, not processes: 8 questions in flight on this
    one-node cluster run inside one RLMActor (each with its own sandbox)."""
    from rlm_ray.corpus import ingest

    _wait_no_actors()
    corpus = str(tmp_path / "corpus")
    ingest([str(stdlib_subset)], corpus)
    queries = str(write_jsonl(define_questions(stdlib_subset, 8, seed=21), tmp_path / "q.jsonl"))
    server = sim(latency_ms=1500)   # slow calls: all 8 questions are waiting at once
    most_actors = []
    done = threading.Event()

    def count_actors() -> None:
        while not done.is_set():
            most_actors.append(len(_alive_rlm_actors()))
            time.sleep(0.3)

    counter = threading.Thread(target=count_actors, daemon=True)
    counter.start()
    try:
        summary = run(corpus, queries, str(tmp_path / "results"), rlm=_rlm(server, None),
                      concurrency=8, progress=False)
    finally:
        done.set()
        counter.join(timeout=10)
    assert summary.statuses == {"ok": 8}
    assert summary.peak_in_flight == 8
    assert max(most_actors) == 1                           # one host process, not 8
    assert server.stats()["max_concurrency"] >= 4           # and the questions really overlap
    assert len(summary.answered_by_node) == 1 and sum(summary.answered_by_node.values()) == 8
