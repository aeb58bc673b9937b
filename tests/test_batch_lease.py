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


def test_a_sigkilled_holder_on_this_host_is_taken_over_at_once(folder):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, folder, "60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        run_id = holder.stdout.readline().split()[0]
        with pytest.raises(LeaseHeld, match=f"holder .*:{holder.pid}, run {run_id}"):
            Lease(folder, ttl_s=60).acquire()   # alive: refused, naming it
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    dead = Lease(folder).current()
    assert dead.run_id == run_id and not dead.released
    # Its pid on this host is gone: no need to wait out the 60 s ttl.
    taker = Lease(folder, ttl_s=60).acquire()
    try:
        assert taker.record.generation == dead.generation + 1
        assert taker.record.acquired_at < dead.expires_at
    finally:
        taker.release()


def _write_record(folder: str, generation: int, **fields) -> dict:
    """A lease record as another machine's driver (or a newer version) would write it."""
    import json

    now = time.time()
    record = {"generation": generation, "holder": "other-machine:4242", "run_id": "elsewhere01",
              "acquired_at": now, "expires_at": now + 4, "released": False,
              "host_id": "other-machine/boot/pid:[1]", "pid": 4242, "pid_started_at": 1.0,
              **fields}
    storage.write_bytes_atomic(storage.join(folder, "_lease", f"gen-{generation:010d}.json"),
                               json.dumps(record).encode())
    return record


@pytest.mark.timeout(120)
def test_another_hosts_lease_expires_by_ttl_and_unknown_fields_are_read(folder):
    # A field this version does not know (written by a newer one): read, not spun on.
    # Generation 1: a reader that skipped it would retry creating generation 1 forever.
    record = _write_record(folder, 1, priority="high", fencing={"epoch": 7})
    holder = Lease(folder).current()
    assert holder.run_id == "elsewhere01" and holder.generation == 1
    with pytest.raises(LeaseHeld, match="holder other-machine:4242, run elsewhere01"):
        Lease(folder, ttl_s=4).acquire()   # live on another host: its pid tells us nothing
    taker = Lease(folder, ttl_s=4).acquire(wait_s=60)
    try:
        assert taker.record.generation == 2
        assert taker.record.acquired_at >= record["expires_at"]   # never before its expiry
    finally:
        taker.release()


@pytest.mark.timeout(60)
def test_acquire_is_bounded_when_a_record_is_damaged(folder):
    storage.write_bytes_atomic(storage.join(folder, "_lease", "gen-0000000002.json"), b"{not json")
    taker = Lease(folder, ttl_s=30).acquire()   # an unreadable record counts as expired
    assert taker.record.generation == 3
    taker.release()


# A holder that passed its lease check and then stalled (SIGSTOP here; GC, a VM
# pause or a slow PUT in life) past its ttl, woken after a taker took over: the
# writes it was about to make land late. They must not count.
_STALLED = """
import datetime as dt, json, os, sys, time
from rlm_ray import storage
from rlm_ray.batch import conditional
from rlm_ray.batch.lease import Lease
from rlm_ray.batch.manifest import write_run_info
from rlm_ray.batch.tables import FinishedQuestion, TableWriter

folder, ttl, go = sys.argv[1], float(sys.argv[2]), sys.argv[3]
lease = Lease(folder, ttl_s=ttl).acquire()
def row(qid):
    return FinishedQuestion({"query_id": qid, "question": "q", "answer": "stalled",
                             "status": "ok", "finished_at": dt.datetime.now(dt.timezone.utc)})
writer = TableWriter(folder, generation=lease.generation)
writer.add(row("a"))
writer.flush()
write_run_info(folder, {"status": "running"}, lease)
lease.ensure_held()              # the last check before the writes the pause splits
print(lease.generation, flush=True)
while not os.path.exists(go):
    time.sleep(0.05)
writer.add(row("b"))
writer.flush()                   # a part that lands after the takeover
body = json.dumps({"status": "finished", "lease_generation": lease.generation}).encode()
print(conditional.write_unless_newer(storage.join(folder, "run.json"), body, lease.generation,
                                     storage.join(folder, "_lease", "write.lock")), flush=True)
"""


@pytest.mark.timeout(180)
def test_a_stalled_holders_late_writes_are_fenced_off(folder, tmp_path):
    import json

    from rlm_ray.batch.manifest import read_run_info, write_run_info
    from rlm_ray.batch.tables import FinishedQuestion, TableWriter, read_run

    go = tmp_path / "go"
    stalled = subprocess.Popen([sys.executable, "-c", _STALLED, folder, "8", str(go)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = stalled.stdout.readline()
        assert line.strip(), stalled.communicate(timeout=30)[1][-3000:]
        old_generation = int(line)
        stalled.send_signal(signal.SIGSTOP)
        taker = Lease(folder, ttl_s=30).acquire(wait_s=60)   # alive but stopped: the ttl rule
        assert taker.record.generation == old_generation + 1
        assert {r["query_id"] for r in read_run(folder).answers.to_pylist()} == {"a"}
        writer = TableWriter(folder, generation=taker.generation)
        import datetime as dt

        writer.add(FinishedQuestion({"query_id": "b", "question": "q", "answer": "taker",
                                     "status": "ok",
                                     "finished_at": dt.datetime.now(dt.timezone.utc)}))
        writer.flush()
        write_run_info(folder, {"status": "finished", "by": "taker"}, taker)
        go.write_text("")
        stalled.send_signal(signal.SIGCONT)
        out, err = stalled.communicate(timeout=60)
        assert stalled.returncode == 0, err[-2000:]
        assert out.split() == ["False"]        # the compare-and-swap refused its run.json
        # Its late part exists, and no reader counts it.
        raw = _raw_answers(folder)
        assert sorted(r["query_id"] for r in raw) == ["a", "b", "b"]
        answers = read_run(folder).answers.to_pylist()
        assert [(r["query_id"], r["answer"]) for r in answers] == [("a", "stalled"), ("b", "taker")]
        info = read_run_info(folder)
        assert info["by"] == "taker" and info["lease_generation"] == taker.generation
        taker.release()
        # The holder of a lower generation cannot overwrite it through the lease either.
        assert json.loads(storage.read_bytes(storage.join(folder, "run.json")))["by"] == "taker"
    finally:
        if stalled.poll() is None:
            stalled.send_signal(signal.SIGCONT)
            stalled.kill()
            stalled.wait(timeout=30)


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
def test_a_rerun_right_after_a_sigkilled_driver_resumes_without_waiting(ray_session, sim,
                                                                        small_corpus,
                                                                        stdlib_subset, tmp_path):
    queries = str(write_jsonl(define_questions(stdlib_subset, 12, seed=9, distinct_modules=True),
                              tmp_path / "q.jsonl"))
    server = sim(latency_ms=300)
    out = tmp_path / "results"
    # The default 60 s ttl, and no --lease-wait: had the rerun to wait out the dead
    # driver's lease, it would refuse (exit 2) instead of resuming.
    first = subprocess.Popen(_driver(small_corpus, queries, str(out), server, "--concurrency", "2"),
                             env=_env(ray_session), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 400
    while not list((out / "answers").glob("part-*.parquet")):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    at_kill = server.stats()
    first.wait(timeout=30)
    answered_before = {r["query_id"] for r in _raw_answers(str(out))}
    assert 0 < len(answered_before) < 12
    _wait_no_rlm_actors()   # the dead driver's hosts are gone: nothing of it still calls out
    before = server.stats()
    rerun = subprocess.run(_driver(small_corpus, queries, str(out), server),
                           env=_env(ray_session), capture_output=True, text=True, timeout=500)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "skipped (already finished)" in rerun.stdout
    rows = _raw_answers(str(out))
    ids = [r["query_id"] for r in rows]
    assert len(ids) == 12 and len(set(ids)) == 12
    assert {r["query_id"] for r in rows} >= answered_before
    # The killed driver's unfinished questions are answered again, but their
    # finished calls come from the response cache: the rerun repeats only calls cut
    # off by the kill (still being served then, or answered to a dead client), at
    # most those in flight at the kill plus one reply in transit per question.
    cut_off = at_kill["requests"] - at_kill["completions"] + 2   # --concurrency 2
    assert server.stats()["repeated_prompts"] - before["repeated_prompts"] <= cut_off
    assert before["repeated_prompts"] <= 2   # at most one per question in flight at the kill


@pytest.mark.timeout(600)
def test_a_sigstopped_driver_is_taken_over_and_its_wakeup_changes_nothing(
        ray_session, sim, small_corpus, stdlib_subset, tmp_path):
    import json

    from rlm_ray.batch.tables import read_run

    queries = str(write_jsonl(define_questions(stdlib_subset, 12, seed=19, distinct_modules=True),
                              tmp_path / "q.jsonl"))
    server = sim(latency_ms=300)
    out = tmp_path / "results"
    first = subprocess.Popen(_driver(small_corpus, queries, str(out), server, "--lease-ttl", "4",
                                     "--concurrency", "2"),
                             env=_env(ray_session), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 400
        while not list((out / "answers").glob("part-*.parquet")):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        first.send_signal(signal.SIGSTOP)
        at_stop = server.stats()
        answered_before = {r["query_id"] for r in _raw_answers(str(out))}
        assert len(answered_before) < 12
        taker = subprocess.run(_driver(small_corpus, queries, str(out), server, "--lease-ttl", "4",
                                       "--lease-wait", "120"),
                               env=_env(ray_session), capture_output=True, text=True,
                               timeout=500)
        assert taker.returncode == 0, taker.stderr[-2000:]
        after_taker = server.stats()
        run_info = json.loads((out / "run.json").read_text())
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=120)
    # The woken driver notices it lost the folder and stops, in one line.
    assert first.returncode == 2 and "Traceback" not in stderr, stderr[-2000:]
    assert "lost the lease on" in stderr.strip().splitlines()[-1]
    answers = read_run(str(out)).answers.to_pylist()
    assert sorted(r["query_id"] for r in answers) == sorted(
        json.loads(line)["query_id"] for line in open(queries))
    assert all(r["status"] == "ok" for r in answers)
    # One committed row per query id, and run.json is still the taker's.
    assert json.loads((out / "run.json").read_text()) == run_info
    assert run_info["status"] == "finished" and run_info["lease_generation"] == 2
    assert run_info["answered"] == 12
    # Nothing paid twice beyond the calls of the questions in flight at the stop.
    assert after_taker["repeated_prompts"] - at_stop["repeated_prompts"] <= 2
    assert server.stats()["repeated_prompts"] - at_stop["repeated_prompts"] <= 2


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


def test_run_json_writers_racing_leave_the_highest_generations(folder):
    """Compare-and-swap on the stored generation (S3 If-Match on the ETag read,
    flock locally): however the writes interleave, a lower generation never
    replaces a higher one's file, and each writer learns whether it won."""
    import json

    from rlm_ray.batch import conditional

    uri = storage.join(folder, "run.json")
    lock = storage.join(folder, "_lease", "write.lock")
    outcomes: dict[int, list[bool]] = {}
    barrier = threading.Barrier(6)

    def write(generation: int) -> None:
        barrier.wait()
        body = json.dumps({"lease_generation": generation}).encode()
        outcomes[generation] = [conditional.write_unless_newer(uri, body, generation, lock)
                                for _ in range(4)]

    threads = [threading.Thread(target=write, args=(g,)) for g in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert json.loads(storage.read_bytes(uri))["lease_generation"] == 6
    assert all(outcomes[6])                        # the newest never loses
    for generation, results in outcomes.items():   # once refused, refused for good
        assert results == sorted(results, reverse=True), (generation, results)
