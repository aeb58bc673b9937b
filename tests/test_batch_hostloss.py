"""A lost host is not charged to the questions it carried: real Ray (the
session instance), the real engine and sandbox, the provider SIMULATOR over
HTTP, the response cache on disk.

A host carries many questions, so its death is retried without counting an
attempt, and the calls its questions had finished come back from the response
cache on retry; only a question that was in flight at two host deaths runs
alone on a dedicated host, and is dead-lettered alone if that host dies too.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from rlm_ray.batch.define_questions import define_questions, write_jsonl
from rlm_ray.batch.pool import HostPool
from rlm_ray.batch.runner import run
from rlm_ray.batch.tables import read_run
from rlm_ray.engine.actor import FAULT_KILL_HOST_AFTER_S, FAULT_KILL_HOST_MARKER

SIM_MODEL = "openai/sim/rlm-policy"
# Fault injection (engine/actor.py, armed only in the hosts these tests start):
# a question carrying this text SIGKILLs its host process, as a native crash or
# the OOM killer in host-side code would.
KILL_MARKER = "(test fault: this question kills its host)"


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, stdlib_subset) -> str:
    from rlm_ray.corpus import ingest

    out = tmp_path_factory.mktemp("hostloss_corpus") / "corpus"
    ingest([str(stdlib_subset)], str(out))
    return str(out)


def _rlm(server, cache_uri: str) -> dict:
    from rlm_ray.llm.config import GatewayConfig

    return {"model": SIM_MODEL, "api_base": server.base_url, "max_iterations": 12,
            "gateway": GatewayConfig(api_base=server.base_url, cache_uri=cache_uri,
                                     cache_mode="auto")}


def _questions(stdlib_subset, count: int, seed: int) -> list[dict]:
    # Distinct answer modules: no two questions share a prompt, so a repeated
    # prompt at the simulator is a call paid twice.
    return define_questions(stdlib_subset, count, seed=seed, distinct_modules=True)


@pytest.mark.timeout(600)
def test_a_host_killed_under_8_questions_charges_none_of_them(ray_session, sim, small_corpus,
                                                              stdlib_subset, tmp_path):
    queries = str(write_jsonl(_questions(stdlib_subset, 8, seed=31), tmp_path / "q.jsonl"))
    server = sim(latency_ms=400)
    out = tmp_path / "results"
    hosts = HostPool(hosts=1, concurrency=8)
    killed: list[int] = []
    stop = threading.Event()

    def cached_calls() -> int:
        return sum(1 for p in (out / "cache").rglob("*.json") if not p.name.startswith("."))

    def kill_once_calls_were_made() -> None:
        # The host has finished (and so cached) a call per question or so: there is
        # something to replay. (The simulator's count would not do: on a loaded
        # machine it can answer calls the host has not yet read.)
        while not stop.is_set() and cached_calls() < 8:
            time.sleep(0.05)
        if not stop.is_set():
            [pid] = hosts.pids()
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_once_calls_were_made, daemon=True)
    killer.start()
    try:
        # max_attempts=1: a question charged an attempt for the death would be dead-lettered.
        summary = run(small_corpus, queries, str(out), rlm=_rlm(server, str(out / "cache")),
                      concurrency=8, progress=False, max_attempts=1, hosts=hosts)
    finally:
        stop.set()
        killer.join(timeout=30)
        hosts.shutdown()
    assert killed, "the host was never killed"
    tables = read_run(str(out))
    answers = tables.answers.to_pylist()
    assert len(answers) == 8
    assert all(a["status"] == "ok" for a in answers), [a["error"] for a in answers]
    assert all(a["attempts"] == 1 for a in answers)
    on_dead_host = [a for a in answers if a["host_losses"] == 1]
    assert on_dead_host and all(a["host_losses"] in (0, 1) for a in answers)
    assert summary.host_loss_retries == len(on_dead_host) and summary.isolated == 0
    # Simulator vs calls table: every answered call was either paid once and
    # recorded, or paid by the killed attempt and replayed from the cache; at
    # most one call per question (its root loop is sequential) was cut off by
    # the kill and sent again.
    stats = server.stats()
    calls = tables.calls.to_pylist()
    paid = sum(not c["cache_hit"] for c in calls)
    replayed = sum(bool(c["cache_hit"]) for c in calls)
    assert replayed > 0                                   # the retries drew on the cache
    cut_off = stats["completions"] - paid - replayed
    assert 0 <= cut_off <= len(on_dead_host), (stats, paid, replayed)
    assert stats["repeated_prompts"] <= cut_off


@pytest.mark.timeout(600)
def test_a_question_that_kills_its_host_is_retried_alone_and_dead_lettered_alone(
        ray_session, sim, small_corpus, stdlib_subset, tmp_path):
    questions = _questions(stdlib_subset, 9, seed=37)
    questions[-1] = dict(questions[-1], query_id="killer",
                         question=f"{questions[-1]['question']} {KILL_MARKER}")
    queries = str(write_jsonl(questions, tmp_path / "q.jsonl"))
    server = sim(latency_ms=300)
    out = tmp_path / "results"
    hosts = HostPool(hosts=1, concurrency=9,
                     actor_env={FAULT_KILL_HOST_MARKER: KILL_MARKER, FAULT_KILL_HOST_AFTER_S: "1.5"})
    try:
        summary = run(small_corpus, queries, str(out), rlm=_rlm(server, str(out / "cache")),
                      concurrency=9, progress=False, max_attempts=1, hosts=hosts)
    finally:
        hosts.shutdown()
    answers = {a["query_id"]: a for a in read_run(str(out)).answers.to_pylist()}
    assert len(answers) == 9
    killer = answers.pop("killer")
    assert killer["status"] == "error" and killer["host_losses"] == 3
    assert "killed its host 3 times, the last time running alone" in killer["error"]
    # Its neighbours end ok, charged no attempt; none was on the host of its third
    # death (that would have been a third loss for it, and a dead letter).
    assert all(a["status"] == "ok" for a in answers.values()), answers
    assert all(a["attempts"] == 1 and a["host_losses"] <= 2 for a in answers.values())
    assert summary.isolated >= 1 and summary.statuses == {"ok": 8, "error": 1}

    # A plain rerun keeps the dead letter; --retry-failed answers it again (on
    # hosts without the fault), and its new row supersedes the old one.
    again = run(small_corpus, queries, str(out), rlm=_rlm(server, str(out / "cache")),
                progress=False)
    assert again.ran == 0 and again.skipped == 9
    again = run(small_corpus, queries, str(out), rlm=_rlm(server, str(out / "cache")),
                progress=False, retry_failed=True)
    assert again.ran == 1
    [row] = [a for a in read_run(str(out)).answers.to_pylist() if a["query_id"] == "killer"]
    assert row["host_losses"] == 0 and "killed its host" not in (row["error"] or "")
