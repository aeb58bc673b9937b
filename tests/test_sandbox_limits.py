"""Issue 11, sandbox part: host-side work bounded from the sandbox's side,
machine-wide limits enforced by the kernel, direct mode made safe, hygiene.

Every attack is stopped as soon as it has clearly passed the limit the
sandbox should enforce, so on code without the fix these tests fail quickly
instead of eating the machine. Times are checked against the configured
limits plus a generous slack for a loaded machine, never against absolutes.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from sandbox import Sandbox

BLOCK_LIMIT_S = 3.0   # the block limit
GRACE_S = 2.0
SLACK_S = 3.0         # scheduling on a 2-core machine shared by several test runs
HOST_RSS_SLACK_MB = 200


def peak_rss_reset() -> None:
    """Reset this process's peak RSS (VmHWM) so a test measures only itself."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture(params=["bwrap", "direct"])
def mode(request) -> str:
    return request.param


@pytest.fixture
def make_sandbox(mode):
    made: list[Sandbox] = []

    def make(host_functions=None, **opts) -> Sandbox:
        opts.setdefault("timeout_s", BLOCK_LIMIT_S)
        opts.setdefault("grace_s", GRACE_S)
        sb = Sandbox(host_functions, use_bwrap=(mode == "bwrap"), **opts)
        made.append(sb)
        return sb

    yield make
    for sb in made:
        sb.close()


def slow_host(delay_s: float, give_up_s: float):
    """A host function that takes `delay_s` per call and gives up (returns
    "stop") once `give_up_s` have passed, so an unfixed sandbox ends too."""
    started = time.monotonic()

    def slow() -> str:
        time.sleep(delay_s)
        return "stop" if time.monotonic() - started > give_up_s else "again"
    return slow


def serves_next_block(sb: Sandbox) -> None:
    result = sb.run("print('next block', 6 * 7)", timeout_s=30)
    assert result.error is None, result.error
    assert result.stdout.endswith("next block 42\n")


# -- host time counts; the watchdog cannot be paused --------------------------

@pytest.mark.timeout(120)
def test_time_in_host_calls_counts_against_the_block_limit(make_sandbox):
    slow = slow_host(delay_s=0.5, give_up_s=BLOCK_LIMIT_S + GRACE_S + 2 * SLACK_S)
    sb = make_sandbox({"slow": slow})
    result = sb.run("while slow() == 'again': pass\nprint('host calls ended')")
    assert result.timed_out, result
    assert result.elapsed_s < BLOCK_LIMIT_S + GRACE_S + SLACK_S, result.elapsed_s
    assert "host calls ended" not in result.stdout
    serves_next_block(sb)


@pytest.mark.timeout(120)
def test_model_thread_looping_host_calls_cannot_pause_the_watchdog(make_sandbox):
    """`while True: pass` in the main thread ends at the limit although another
    model thread is inside a host call almost all the time."""
    slow = slow_host(delay_s=0.2, give_up_s=BLOCK_LIMIT_S + GRACE_S + 2 * SLACK_S)
    sb = make_sandbox({"slow": slow})
    code = ("import threading\n"
            "def pump():\n"
            "    while slow() == 'again': pass\n"
            "threading.Thread(target=pump, daemon=True).start()\n"
            "while True: pass\n")
    result = sb.run(code)
    assert result.timed_out, result
    assert result.elapsed_s < BLOCK_LIMIT_S + GRACE_S + SLACK_S, result.elapsed_s
    serves_next_block(sb)


@pytest.mark.timeout(120)
def test_a_model_thread_in_a_host_call_does_not_swallow_the_next_request(make_sandbox):
    """A thread left running by one block keeps calling the host between
    blocks; the host's next request must still reach the REPL."""
    slow = slow_host(delay_s=0.3, give_up_s=60)
    sb = make_sandbox({"slow": slow}, timeout_s=10)
    code = ("import threading\n"
            "def pump():\n"
            "    while slow() == 'again': pass\n"
            "threading.Thread(target=pump, daemon=True).start()\n")
    assert sb.run(code).error is None
    time.sleep(1.0)  # the thread is now waiting for a reply the host does not send yet
    for _ in range(3):
        result = sb.run("print('still here')")
        assert result.error is None and not result.timed_out, result
        assert result.stdout.endswith("still here\n")


def test_host_functions_get_the_runs_deadline(make_sandbox):
    from sandbox import current_deadline

    seen: list[float] = []

    def probe() -> int:
        seen.append(current_deadline() - time.monotonic())
        return 1

    sb = make_sandbox({"probe": probe})
    assert sb.run("probe(); probe()").error is None
    assert len(seen) == 2 and all(0 < left <= BLOCK_LIMIT_S for left in seen)
    assert seen[1] <= seen[0]  # the same deadline, not a fresh one per call


# -- frames are size-checked by the host before decoding ----------------------

ITEMS = 5_000_000  # `[{}]*5M`: a 15 MB frame that decodes to ~400 MB of dicts


@pytest.mark.timeout(120)
def test_huge_host_call_arguments_are_refused_cheaply(make_sandbox):
    calls: list[int] = []
    sb = make_sandbox({"sql": lambda query: calls.append(1) or 0}, timeout_s=30)
    sb.run("marker = 42")
    peak_rss_reset()
    base = current_rss_mb()
    result = sb.run(f"sql([{{}}] * {ITEMS})")
    grown = peak_rss_mb() - base
    print(f"host peak RSS growth: {grown:.0f} MB")
    assert grown < HOST_RSS_SLACK_MB, grown
    assert not calls
    assert result.error and "TypeError" in result.error and "too many values" in result.error
    assert sb.run("print(marker)").stdout == "42\n"  # refused inside: the REPL lives on


FORGED_VALUE = (
    "import gc, sys\n"
    "protocol = sys.modules['sandbox.protocol']\n"
    "worker = next(o for o in gc.get_objects() if type(o).__name__ == 'Worker')\n"
    "def forged(message):\n"
    "    body = b'{\"op\":\"value\",\"ok\":true,\"json\":\"[]\",\"value\":[' "
    f"+ b','.join([b'{{}}'] * {ITEMS}) + b']}}'\n"
    "    protocol.write_all(worker.reply_fd, protocol.HEADER.pack(len(body)) + body)\n"
    "    return {'op': 'value', 'ok': True, 'json': '[]', 'value': []}\n"
    "worker.handlers['get'] = forged\n"
)


@pytest.mark.timeout(120)
def test_a_replaced_worker_handler_cannot_make_the_host_decode_millions_of_values(
        make_sandbox):
    from sandbox import SandboxError

    sb = make_sandbox(timeout_s=30)
    assert sb.run(FORGED_VALUE).error is None
    peak_rss_reset()
    base = current_rss_mb()
    with pytest.raises(SandboxError, match="invalid message"):
        sb.get("anything")
    grown = peak_rss_mb() - base
    print(f"host peak RSS growth: {grown:.0f} MB")
    assert grown < HOST_RSS_SLACK_MB, grown
    serves_next_block(sb)
