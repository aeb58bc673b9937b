"""Results-folder leases: exactly-once answers under concurrent drivers, on a
local folder and on S3 (moto_server over HTTP, which honours If-None-Match),
with real driver processes, the session's Ray and the provider SIMULATOR."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rlm_ray import storage
from rlm_ray.batch.define_questions import write_jsonl, define_questions
from rlm_ray.batch.lease import Lease, LeaseHeld

SIM_MODEL = "openai/sim/rlm-policy"


@pytest.fixture(params=["local", "s3"])
def folder(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "results")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/runs/results"


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, stdlib_subset) -> str:
    from rlm_ray.corpus import ingest

    out = tmp_path_factory.mktemp("lease_corpus") / "corpus"
    ingest([str(stdlib_subset)], str(out))
    return str(out)


def _raw_answers(out: str) -> list[dict]:
    """Every committed answers row straight from the Parquet parts (no dedup)."""
    fs, root = storage.filesystem(storage.join(out, "answers"))
    parts = [e.uri for e in storage.list_prefix(storage.join(out, "answers"))
             if e.relpath.endswith(".parquet")]
    rows = []
    for uri in parts:
        fs, path = storage.filesystem(uri)
        rows.extend(pq.read_table(path, filesystem=fs).to_pylist())
    return rows


def test_racing_drivers_exactly_one_takes_the_lease(folder):
    outcomes: list = []
    barrier = threading.Barrier(6)

    def contend() -> None:
        lease = Lease(folder, ttl_s=30)
        barrier.wait()
        try:
            outcomes.append(lease.acquire())
        except LeaseHeld as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=contend) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [o for o in outcomes if isinstance(o, Lease)]
    refusals = [o for o in outcomes if isinstance(o, LeaseHeld)]
    assert len(winners) == 1 and len(refusals) == 5
    [winner] = winners
    for refusal in refusals:   # one line naming the holder
        text = str(refusal)
        assert "\n" not in text and winner.record.run_id in text and winner.record.holder in text
    generation = winner.record.generation
    winner.release()
    again = Lease(folder, ttl_s=30).acquire()   # a released lease is free at once
    assert again.record.generation == generation + 1
    again.release()


_HOLDER = """
import sys, time
from rlm_ray.batch.lease import Lease
lease = Lease(sys.argv[1], ttl_s=float(sys.argv[2])).acquire()
print(lease.record.run_id, lease.record.expires_at, flush=True)
time.sleep(600)
"""


def test_a_sigkilled_holder_is_taken_over_only_after_expiry(folder):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, folder, "4"],
                              stdout=subprocess.PIPE, text=True)
    try:
        run_id = holder.stdout.readline().split()[0]
        time.sleep(5)   # a few heartbeats: the expiry we must respect is the renewed one
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    dead = Lease(folder).current()
    assert dead.run_id == run_id and not dead.released
    with pytest.raises(LeaseHeld, match=f"holder .*:{holder.pid}, run {run_id}"):
        Lease(folder, ttl_s=4).acquire()   # still within its ttl: refused at once
    taker = Lease(folder, ttl_s=4).acquire(wait_s=60)
    try:
        assert taker.record.generation == dead.generation + 1
        assert taker.record.acquired_at >= dead.expires_at   # never before the expiry
    finally:
        taker.release()


def _wait_no_rlm_actors(timeout: float = 60.0) -> None:
    from ray._private.state import actors

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [a for a in actors(actor_state_name="ALIVE").values()
                if a["ActorClassName"] == "RLMActor"]:
            return
        time.sleep(0.5)


def _driver(corpus: str, queries: str, out: str, server, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rlm_ray.cli", "run", corpus, "--queries", queries,
            "--out", out, "--model", SIM_MODEL, "--api-base", server.base_url,
            "--concurrency", "4", "--no-progress", *extra]


def _env(ray_session) -> dict:
    return dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)


@pytest.mark.timeout(600)
def test_two_drivers_at_once_answer_each_question_once(ray_session, sim, small_corpus,
                                                        stdlib_subset, tmp_path, folder):
    # Distinct answer modules: no two questions share a sub-call prompt, so a
    # repeated prompt at the simulator would be a question answered twice.
    queries = str(write_jsonl(define_questions(stdlib_subset, 8, seed=5, distinct_modules=True),
                              tmp_path / "q.jsonl"))
    server = sim(latency_ms=200)
    command = _driver(small_corpus, queries, folder, server)
    drivers = [subprocess.Popen(command, env=_env(ray_session), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [d.communicate(timeout=540) for d in drivers]
    codes = [d.returncode for d in drivers]
    assert 0 in codes, outputs
    for driver, (stdout, stderr), code in zip(drivers, outputs, codes):
        if code != 0:   # the loser refuses in one line naming the winner
            other = next(d for d in drivers if d is not driver)
            assert code == 2 and "Traceback" not in stderr, stderr[-2000:]
            assert stderr.strip().splitlines()[-1].startswith(
                f"rlm-ray: error: results folder {folder} is in use by another run (holder ")
            assert f":{other.pid}, run " in stderr
    rows = _raw_answers(folder)
    ids = [r["query_id"] for r in rows]
    assert len(ids) == 8 and len(set(ids)) == 8          # exactly one row per query id
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    assert server.stats()["repeated_prompts"] == 0       # nothing asked twice


@pytest.mark.timeout(600)
def test_a_killed_driver_is_taken_over_after_its_lease_expires(ray_session, sim, small_corpus,
                                                              stdlib_subset, tmp_path):
    queries = str(write_jsonl(define_questions(stdlib_subset, 12, seed=9, distinct_modules=True),
                              tmp_path / "q.jsonl"))
    server = sim(latency_ms=300)
    out = tmp_path / "results"
    first = subprocess.Popen(_driver(small_corpus, queries, str(out), server, "--lease-ttl", "6",
                                     "--concurrency", "2"),
                             env=_env(ray_session), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 400
    while not list((out / "answers").glob("part-*.parquet")):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    killed_at = time.time()
    answered_before = {r["query_id"] for r in _raw_answers(str(out))}
    assert 0 < len(answered_before) < 12
    _wait_no_rlm_actors()   # the dead driver's hosts are gone: nothing of it still calls out
    before = server.stats()

    refused = subprocess.run(_driver(small_corpus, queries, str(out), server, "--lease-ttl", "6"),
                             env=_env(ray_session), capture_output=True, text=True, timeout=300)
    if time.time() < killed_at + 5:   # decided well within the dead driver's ttl
        assert refused.returncode == 2 and f":{first.pid}, run " in refused.stderr
    taker = subprocess.run(_driver(small_corpus, queries, str(out), server, "--lease-ttl", "6",
                                   "--lease-wait", "120"),
                           env=_env(ray_session), capture_output=True, text=True, timeout=500)
    assert taker.returncode == 0, taker.stderr[-2000:]
    rows = _raw_answers(str(out))
    ids = [r["query_id"] for r in rows]
    assert len(ids) == 12 and len(set(ids)) == 12
    assert {r["query_id"] for r in rows} >= answered_before
    # The killed driver's unfinished questions are answered again, but their
    # finished calls come from the response cache: the taker repeats no prompt
    # (only a call cut off by the kill itself may have been answered unseen).
    assert server.stats()["repeated_prompts"] == before["repeated_prompts"]
    assert before["repeated_prompts"] <= 2   # at most one per question in flight at the kill


def test_a_second_pipeline_fire_of_a_running_date_refuses(tmp_path):
    from rlm_ray.batch.pipeline import PipelineSpec, partition_uri, run_pipeline

    spec = PipelineSpec(name="nightly", sources=[str(tmp_path / "src")],
                        corpus=str(tmp_path / "corpus"), output=str(tmp_path / "out"),
                        questions=[{"query_id": "a", "question": "x"}], model="sim")
    partition = partition_uri(spec, "2026-01-01")
    first_fire = Lease(partition, ttl_s=30).acquire()   # the first fire, mid-run
    try:
        with pytest.raises(LeaseHeld, match=first_fire.record.run_id):
            run_pipeline(spec, "2026-01-01")
        assert not (Path(partition) / "run.json").exists()
        assert not (tmp_path / "corpus").exists()         # refused before ingest
    finally:
        first_fire.release()
