"""The CPU and floor figures of the batch bench: every process's CPU is
counted once, including processes that ended between samples and sandbox
workers (killed, never reaped by a parent, so no process tree keeps theirs)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from rlm_ray.bench.cpu import BatchCpu
from rlm_ray.bench.floor import batch_floor, latency_floor

BURN = ("import time\n"
        "while time.process_time() < {s}:\n"
        "    pass\n")


def _burn(seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BURN.format(s=seconds)])


def test_a_child_that_ended_between_samples_is_still_counted():
    meter = BatchCpu()
    meter.start()
    child = _burn(0.4)
    child.wait(timeout=300)       # reaped: its CPU moved into our "children" counters
    meter.sample()
    assert meter.total_s >= 0.4
    # ... and only once: a second sample adds nothing that was not spent since.
    first = meter.total_s
    meter.sample()
    assert meter.total_s - first < 0.3


def test_a_live_child_is_counted_and_split_by_kind():
    meter = BatchCpu()
    meter.start()
    child = _burn(0.3)
    try:
        deadline_samples = 0
        while child.poll() is None and deadline_samples < 3000:
            meter.sample()
            deadline_samples += 1
    finally:
        child.wait(timeout=300)
    meter.sample()
    kinds = meter.by_kind()
    assert meter.total_s >= 0.3
    assert sum(kinds.values()) <= meter.total_s + 0.05   # the split never exceeds the total


def test_a_killed_sandbox_workers_cpu_is_read_before_the_kill():
    from sandbox import Sandbox
    from sandbox.process import ended_workers_cpu_s

    before, ended = ended_workers_cpu_s()
    with Sandbox(timeout_s=120) as sandbox:
        result = sandbox.run(BURN.format(s=0.5))
        assert result.error is None, result.error
    after, ended_after = ended_workers_cpu_s()
    assert ended_after == ended + 1
    assert after - before >= 0.5


def test_the_batch_floor_is_the_larger_of_its_two_lower_bounds():
    def question(qid: str, kinds: str) -> list[dict]:
        return [{"query_id": qid, "kind": {"r": "root", "s": "sub"}[k]} for k in kinds]

    calls = question("a", "rssr") + question("b", "rr") + question("c", "r")
    assert latency_floor(question("a", "rssr"), 2.0) == (2, 1, 6.0)
    # One slot: every question waits for the one before it (6 + 4 + 2 s).
    assert batch_floor(calls, 2.0, concurrency=1) == (12.0, 6.0)
    # Enough slots: the slowest question decides.
    assert batch_floor(calls, 2.0, concurrency=10) == (6.0, 6.0)
    assert batch_floor([], 2.0, concurrency=4) == (0.0, 0.0)


@pytest.mark.parametrize("concurrency", [2, 3])
def test_the_floor_never_exceeds_a_serial_run(concurrency):
    calls = [{"query_id": f"q{i}", "kind": "root"} for i in range(7)]
    floor, longest = batch_floor(calls, 1.0, concurrency)
    assert longest == 1.0 and 1.0 <= floor <= 7.0
