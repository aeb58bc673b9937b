"""Sandbox part: host-side work bounded from the sandbox's side,
machine-wide limits enforced by the kernel, direct mode made safe, hygiene.

Every attack is stopped as soon as it has clearly passed the limit the
sandbox should enforce, so on code without the fix these tests fail quickly
instead of eating the machine. Times are checked against the configured
limits plus a generous slack for a loaded machine, never against absolutes.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from sandbox import Sandbox

BLOCK_LIMIT_S = 3.0   # the block limit
GRACE_S = 2.0
SANDBOX_DEFAULTS = {"timeout_s": BLOCK_LIMIT_S, "grace_s": GRACE_S}   # for make_sandbox
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


# -- machine-wide limits, enforced by the kernel --------------------------------

def stopper(sb: Sandbox, result) -> str:
    """Which layer stopped a memory attack, for the test's report."""
    if result.error and "MemoryError" in result.error:
        return "rlimits (address space: MemoryError)"
    if result.error:   # the worker was killed at the cap
        return sb.enforcement["memory"]
    return "seccomp (memfd_create refused)" if "refused" in result.stdout else "nothing"


MEMFD_ATTACK = """
import os
total = 0
try:
    for i in range(4):                       # the issue's four memfds of 500 MB
        fd = os.memfd_create(f'blob{i}')
        for _ in range(25):
            os.write(fd, b'x' * (20 << 20))
            total += 20
            print(total, flush=True)
            if total >= 1200:
                raise SystemExit('clearly past the limit')
except OSError as exc:
    print('refused', type(exc).__name__)
"""


@pytest.mark.timeout(180)
def test_memfd_memory_is_capped_by_the_kernel(make_sandbox, mode):
    memory_mb, scratch_mb = 256, 16
    sb = make_sandbox(memory_mb=memory_mb, scratch_mb=scratch_mb, timeout_s=60)
    result = sb.run(MEMFD_ATTACK)
    totals = [int(line) for line in result.stdout.split() if line.isdigit()]
    cap = memory_mb   # memory_mb bounds all the sandbox's RAM, memfds and tmpfs included
    print(f"memfd data written before the stop: {max(totals, default=0)} MB (cap {cap} MB); "
          f"stopped by {stopper(sb, result)}")
    assert "clearly past the limit" not in (result.error or "")
    assert max(totals, default=0) <= cap
    assert result.error or "refused" in result.stdout
    serves_next_block(sb)


CLONE_ATTACK = """
import ctypes, mmap
libc = ctypes.CDLL(None, use_errno=True)
libc.clone.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
# CLONE_VM | FS | FILES | SIGHAND | THREAD | SYSVSEM: a bare thread running pause()
flags = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000
pause = ctypes.cast(libc.pause, ctypes.c_void_p)
stack_bytes, attempts = 16384, 2000
stacks = mmap.mmap(-1, attempts * stack_bytes)
base = ctypes.addressof(ctypes.c_char.from_buffer(stacks))
made = 0
for i in range(attempts):
    if libc.clone(pause, base + (i + 1) * stack_bytes - 64, flags, None) < 0:
        print('refused', ctypes.get_errno())
        break
    made += 1
print('made', made)
"""


@pytest.mark.timeout(120)
def test_raw_clone_threads_are_capped_by_the_kernel(make_sandbox):
    import errno

    sb = make_sandbox(max_tasks=64, timeout_s=60)
    result = sb.run(CLONE_ATTACK)
    assert result.error is None, result.error
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    print(f"raw clone() tasks made: {lines['made']} (max_tasks 64); "
          f"enforced by {sb.enforcement['tasks']}")
    assert int(lines["made"]) < 64
    assert int(lines["refused"]) == errno.EAGAIN
    serves_next_block(sb)


def test_scratch_total_size_is_capped(make_sandbox, mode):
    sb = make_sandbox(scratch_mb=16)
    code = ("written = 0\n"
            "try:\n"
            "    for i in range(64):\n"
            "        with open(f'part{i}', 'wb') as f: f.write(b'x' * (1 << 20))\n"
            "        written += 1\n"
            "except OSError as exc:\n"
            "    print('stopped', exc.strerror)\n"
            "print('written', written)\n")
    result = sb.run(code)
    if mode == "direct":  # a host folder: no kernel-enforced total, and it says so
        assert sb.isolation["scratch_cap"] is False
        return
    assert sb.isolation["scratch_cap"] is True
    assert "stopped No space left on device" in result.stdout, result
    assert int(result.stdout.split("written ")[1]) <= 16
    serves_next_block(sb)


MIRROR_ATTACK = """
import gc, os
worker = next(o for o in gc.get_objects() if type(o).__name__ == 'Worker')
fd = worker.output._mirror_fd
try:
    os.pwrite(fd, b'x' * (1 << 20), 100 << 20)
    print('grown to', os.fstat(fd).st_size)
except OSError as exc:
    print('refused', exc.strerror)
"""


def test_the_output_mirror_cannot_be_grown(make_sandbox):
    sb = make_sandbox()
    result = sb.run(MIRROR_ATTACK)
    assert result.stdout.startswith("refused"), result


@pytest.mark.timeout(120)
def test_a_hard_timeout_never_shows_the_previous_runs_output(make_sandbox):
    """The worker is stuck (a C regex holds the GIL) before it can start the
    next run; what that run shows must not be the previous run's output."""
    sb = make_sandbox(timeout_s=1, grace_s=1)
    first = sb.run("print('OUTPUT OF BLOCK 1')\n"
                   "import re, threading, time\n"
                   "def hog():\n"
                   "    time.sleep(0.5)\n"
                   "    re.match('(a+)+$', 'a' * 60 + 'b')\n"
                   "threading.Thread(target=hog, daemon=True).start()\n")
    assert first.stdout == "OUTPUT OF BLOCK 1\n"
    time.sleep(1.5)
    second = sb.run("print('block 2')")
    assert second.timed_out and "killed" in second.error
    assert "OUTPUT OF BLOCK 1" not in second.stdout
    serves_next_block(sb)


# -- metadata of files the sandbox does not own; signals through fcntl --------

METADATA_ATTACK = """
import ctypes, fcntl, os
libc = ctypes.CDLL(None, use_errno=True)
def attempt(name, action):
    try:
        action()
        print(name, 'done')
    except OSError as exc:
        print(name, type(exc).__name__)
p = {target!r}
attempt('chmod', lambda: os.chmod(p, 0o777))
attempt('chown', lambda: os.chown(p, os.getuid(), os.getgid()))
attempt('utime', lambda: os.utime(p, (0, 0)))
attempt('setxattr', lambda: os.setxattr(p, 'user.pwned', b'1'))
print('inotify', 'done' if libc.inotify_init1(0) >= 0 else 'PermissionError')
r, w = os.pipe()
attempt('F_SETOWN', lambda: fcntl.fcntl(r, fcntl.F_SETOWN, {victim}))
attempt('F_SETSIG', lambda: fcntl.fcntl(r, 10, 9))
fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_ASYNC)
os.write(w, b'x')
"""
METADATA_CALLS = ("chmod", "chown", "utime", "setxattr", "inotify", "F_SETOWN", "F_SETSIG")


@pytest.fixture
def victim():
    """A process the attack tries to SIGKILL through F_SETOWN/F_SETSIG/O_ASYNC."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def run_metadata_attack(sb: Sandbox, mode: str, host_file: Path, victim) -> dict[str, str]:
    # Without bwrap the host file is in reach; with bwrap it is not even visible,
    # so a file of the sandbox's own stands in (the policy is the same).
    target = str(host_file) if mode == "direct" else "own.txt"
    assert sb.run("open('own.txt', 'w').write('x')").error is None
    result = sb.run(METADATA_ATTACK.format(target=target, victim=victim.pid))
    assert result.error is None, result.error
    return dict(line.split(" ", 1) for line in result.stdout.splitlines())


def test_metadata_of_other_files_cannot_be_changed(make_sandbox, mode, tmp_path, victim):
    host_file = tmp_path / "host-secret.txt"
    host_file.write_text("secret")
    host_file.chmod(0o600)
    before = host_file.stat()
    outcome = run_metadata_attack(make_sandbox(), mode, host_file, victim)
    assert outcome == {name: "PermissionError" for name in METADATA_CALLS}, outcome
    after = host_file.stat()
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    assert os.listxattr(host_file) == []
    time.sleep(0.2)
    assert victim.poll() is None


def test_signal_scoping_is_not_claimed_on_an_older_landlock(make_sandbox, mode, tmp_path,
                                                             victim, monkeypatch):
    """On a kernel before Landlock ABI 6 (emulated here) `landlock_scope` is
    reported missing, with a warning, and the fcntl route to SIGKILL another
    process is still closed (by seccomp)."""
    import warnings

    from sandbox import host as host_module

    monkeypatch.setenv("SANDBOX_LANDLOCK_MAX_ABI", "5")
    monkeypatch.setattr(host_module, "_warned", set())  # it warns once per process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb = make_sandbox()
    assert sb.isolation["landlock"] is True and sb.isolation["landlock_scope"] is False
    assert any("landlock_scope" in str(w.message) for w in caught)
    host_file = tmp_path / "f.txt"
    host_file.write_text("x")
    outcome = run_metadata_attack(sb, mode, host_file, victim)
    assert outcome["F_SETOWN"] == outcome["F_SETSIG"] == "PermissionError"
    time.sleep(0.2)
    assert victim.poll() is None


# -- hygiene: nothing outlives a killed host ------------------------------------

HOST_SCRIPT = """
import sys, time
from sandbox import Sandbox
sb = Sandbox(use_bwrap={bwrap})
print(sb.scratch_dir, flush=True)
time.sleep(120)
"""


def processes_marked(host_pid: int) -> list[int]:
    """bwrap and worker processes started by the host `host_pid` (their
    command line ends with the marker sandbox.process adds)."""
    marker = re.compile(rb"sandbox-host=%d[\s\x00]" % host_pid)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.search(cmdline):
            found.append(int(entry))
    return found


@pytest.mark.timeout(120)
def test_a_killed_host_leaves_no_worker_scratch_or_cgroup(mode):
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT.format(bwrap=mode == "bwrap")],
                            stdout=subprocess.PIPE, text=True, env=env)
    scratch = host.stdout.readline().strip()
    assert processes_marked(host.pid)
    host.send_signal(signal.SIGKILL)
    host.wait()
    deadline = time.monotonic() + 30
    while processes_marked(host.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not processes_marked(host.pid)
    # the next host to start a sandbox removes what the killed one left
    subprocess.run([sys.executable, "-c", "from sandbox import Sandbox\n"
                    f"Sandbox(use_bwrap={mode == 'bwrap'}).close()"], env=env, check=True)
    if scratch != "None":
        assert not os.path.exists(scratch)
    leftovers = [str(p) for p in Path("/sys/fs/cgroup").glob(f"**/sandbox-{host.pid}-*")]
    assert leftovers == []


def test_direct_mode_without_landlock_is_refused_unless_opted_in(monkeypatch):
    """Without bwrap, Landlock is what keeps host files unreadable: a kernel
    without it (emulated: ABI 0) makes direct mode refuse to start."""
    from sandbox import SandboxError
    from sandbox import host as host_module

    monkeypatch.setenv("SANDBOX_LANDLOCK_MAX_ABI", "0")
    monkeypatch.setattr(host_module, "_warned", set())
    with pytest.raises(SandboxError, match="refusing to run without bubblewrap and without "
                                           "landlock.*allow_reduced_isolation"):
        Sandbox(use_bwrap=False)
    with pytest.warns(RuntimeWarning, match="landlock"):
        with Sandbox(use_bwrap=False, allow_reduced_isolation=True) as sb:
            assert sb.isolation["landlock"] is False and sb.isolation["seccomp"] is True
            assert sb.run("print(6 * 7)").stdout == "42\n"
    with Sandbox(use_bwrap=True) as sb:  # bwrap's own root still confines the filesystem
        assert sb.isolation["bwrap"] is True and sb.isolation["landlock"] is False


@pytest.mark.timeout(120)
def test_a_host_function_overrunning_the_limit_does_not_cost_the_repl_its_state(make_sandbox):
    """The model waited for a host function that ignored its deadline: the run
    ends as a timeout as soon as the host returns, and REPL state is kept."""
    def stubborn() -> int:
        time.sleep(BLOCK_LIMIT_S + GRACE_S + 1)
        return 1

    sb = make_sandbox({"stubborn": stubborn})
    sb.run("marker = 42")
    result = sb.run("stubborn()")
    assert result.timed_out and "ExecutionTimeout" in result.error
    assert "state is kept" in result.error, result.error
    assert sb.run("print(marker)").stdout == "42\n"


def test_get_of_a_value_with_too_many_items_is_refused_not_fatal(make_sandbox):
    """The host's value-count bound is also applied by the worker, so an
    honest get() of a huge list is a clear error, not a killed REPL."""
    from sandbox import SandboxError

    sb = make_sandbox(timeout_s=30)
    sb.run(f"big = [0] * {ITEMS}\nsmall = list(range(1000))\nmarker = 42")
    with pytest.raises(SandboxError, match="too many values"):
        sb.get("big")
    assert sb.get("small") == list(range(1000))
    assert sb.run("print(marker)").stdout == "42\n"


# -- memory_mb bounds all the sandbox's RAM; scratch has a total cap everywhere --

SCRATCH_THEN_MEMORY = """
import os
written = 0
try:
    for i in range({scratch_parts}):
        with open(f'part{{i}}', 'wb') as f: f.write(b'x' * (10 << 20))
        written += 10
except OSError as exc:
    print('scratch stopped', exc.strerror)
print('scratch', written, flush=True)
blob = b'x' * ({alloc_mb} << 20)
print('allocated', flush=True)
"""


@pytest.mark.timeout(180)
def test_memory_mb_bounds_scratch_and_memory_together(make_sandbox, mode):
    """300 MB in scratch plus a 250 MB value exceed memory_mb=512 although each
    fits its own limit (scratch_mb=400; the address space is far from 512 MB):
    the sandbox's RAM is one budget, and the memory cgroup holds it."""
    sb = make_sandbox(memory_mb=512, scratch_mb=400, timeout_s=60)
    result = sb.run(SCRATCH_THEN_MEMORY.format(scratch_parts=30, alloc_mb=250))
    print(f"{mode}: {sb.enforcement}; stopped by {stopper(sb, result)}")
    assert "scratch 300" in result.stdout, result   # scratch alone fits
    assert "allocated" not in result.stdout
    assert result.error and "SIGKILL" in result.error, result.error   # killed at the cap
    serves_next_block(sb)


@pytest.mark.timeout(180)
def test_direct_mode_scratch_has_a_total_cap(request):
    """600 MB written to scratch with scratch_mb=256 used to land on the host's
    disk. Without bwrap scratch is a host tmpfs folder charged to the memory
    cgroup, so the writer is stopped within memory_mb and the disk gets nothing
    (under bwrap: test_scratch_total_size_is_capped)."""
    sb = Sandbox(use_bwrap=False, memory_mb=256, scratch_mb=256, timeout_s=60)
    request.addfinalizer(sb.close)
    assert os.statvfs(sb.scratch_dir).f_blocks  # exists; on the host's tmpfs, not its disk
    assert sb.scratch_dir.startswith("/dev/shm/"), sb.scratch_dir
    result = sb.run("written = 0\n"
                    "try:\n"
                    "    for i in range(30):\n"
                    "        with open(f'part{i}', 'wb') as f: f.write(b'x' * (20 << 20))\n"
                    "        written += 20\n"
                    "        print(written, flush=True)\n"
                    "except OSError as exc:\n"
                    "    print('stopped', exc.strerror)\n")
    totals = [int(line) for line in result.stdout.split() if line.isdigit()]
    print(f"scratch written before the stop: {max(totals, default=0)} MB (memory_mb 256); "
          f"{sb.enforcement['scratch']}")
    assert max(totals, default=0) <= 256
    assert result.error or "stopped" in result.stdout
    assert sum(e.stat().st_size for e in os.scandir(sb.scratch_dir)) == 0  # emptied with the REPL
    serves_next_block(sb)


@pytest.fixture
def no_cgroups(monkeypatch):
    """Cgroups turned off on purpose (SANDBOX_CGROUP=0): the rlimit fallback."""
    from sandbox import cgroup_setup

    monkeypatch.setenv("SANDBOX_CGROUP", "0")
    monkeypatch.setattr(cgroup_setup, "_support", None)   # found once per process
    yield
    monkeypatch.setattr(cgroup_setup, "_support", None)


def test_without_a_memory_cgroup_direct_mode_refuses_unless_reduced_isolation_is_allowed(
        no_cgroups):
    from sandbox import SandboxError

    with pytest.raises(SandboxError, match="refusing to run without bubblewrap and without a "
                       "total cap on scratch: nothing would cap the total size of the scratch "
                       "folder.*a total cap needs a memory cgroup.*allow_reduced_isolation"):
        Sandbox(use_bwrap=False)
    with Sandbox(use_bwrap=False, allow_reduced_isolation=True) as sb:
        assert sb.isolation["memory_cgroup"] is False
        assert "no total cap" in sb.enforcement["scratch"]
        assert sb.run("print(6 * 7)").stdout == "42\n"


def test_without_a_memory_cgroup_rlimits_share_memory_mb_with_the_tmpfs(no_cgroups):
    """The fallback keeps memory_mb's meaning: the address space gets what the
    scratch and /tmp tmpfs leave, and memfds are refused outright."""
    from sandbox import SandboxError

    with Sandbox(use_bwrap=True, memory_mb=256, scratch_mb=64, timeout_s=30) as sb:
        assert sb.isolation["memory_cgroup"] is False and sb.isolation["rlimits"] is True
        print(sb.enforcement["memory"])
        assert "address space 128 MiB + tmpfs 128 MiB" in sb.enforcement["memory"]
        result = sb.run("blob = b'x' * (150 << 20)")
        assert result.error and "MemoryError" in result.error
        assert "PermissionError" in sb.run("import os\nos.memfd_create('m')").error
        serves_next_block(sb)
    with pytest.raises(SandboxError, match="raise memory_mb or lower scratch_mb"):
        Sandbox(use_bwrap=True, memory_mb=256, scratch_mb=256)


# -- cgroup v2: the host moves into a leaf before enabling controllers ----------

V2_HOST = """
import json, os, subprocess, sys
from sandbox import cgroup_setup
group, shared = sys.argv[1], sys.argv[2] == 'shared'
with open(os.path.join(group, 'cgroup.procs'), 'w') as f:
    f.write(str(os.getpid()))
neighbour = subprocess.Popen(['sleep', '60']) if shared else None   # born in the group
support = cgroup_setup.discover(('hugetlb',))
out = {'parents': [[p.path, p.version] for p in support.parents], 'problems': support.problems,
       'own': open('/proc/self/cgroup').read().split('0::')[1].strip()}
if support.parents:   # a sandbox group under it takes a limit and a process
    child = os.path.join(support.parents[0].path, 'sandbox-probe')
    os.mkdir(child)
    with open(os.path.join(child, 'hugetlb.2MB.max'), 'w') as f:
        f.write('0')
    worker = subprocess.Popen(['sleep', '60'])
    with open(os.path.join(child, 'cgroup.procs'), 'w') as f:
        f.write(str(worker.pid))
    out['in_child'] = open(os.path.join(child, 'cgroup.procs')).read().split() == [str(worker.pid)]
    worker.kill(); worker.wait()
    os.rmdir(child)
if neighbour:
    neighbour.kill(); neighbour.wait()
print(json.dumps(out))
"""


@pytest.mark.timeout(120)
def test_cgroup_v2_host_moves_into_a_leaf_before_enabling_controllers():
    """On this v1-hybrid machine memory and pids are bound to v1, so the real
    v2 hierarchy (/sys/fs/cgroup/unified) is driven with the one controller it
    has, hugetlb, standing in for memory and pids: the same kernel rule (no
    controllers for the children of a group that holds processes) applies."""
    import json
    import subprocess
    import sys

    from sandbox.cgroup_setup import LEAF_NAME, unified_root

    root = unified_root()
    if "hugetlb" not in Path(root, "cgroup.controllers").read_text().split() \
            or not os.access(Path(root, "cgroup.subtree_control"), os.W_OK):
        pytest.skip("no writable cgroup v2 hierarchy with a free controller here")
    enabled_before = "hugetlb" in Path(root, "cgroup.subtree_control").read_text().split()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("SANDBOX_CGROUP_PARENT", None)
    groups = []
    try:
        Path(root, "cgroup.subtree_control").write_text("+hugetlb")
        outcomes = {}
        for case in ("alone", "shared"):
            group = Path(root, f"sandbox-v2test-{os.getpid()}-{case}")
            group.mkdir()
            groups.append(group)
            done = subprocess.run([sys.executable, "-c", V2_HOST, str(group), case], env=env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            outcomes[case] = json.loads(done.stdout)
        print(json.dumps(outcomes, indent=1))
        alone, shared = outcomes["alone"], outcomes["shared"]
        assert alone["parents"] == [[str(groups[0]), 2]] and alone["problems"] == []
        assert alone["own"].endswith(f"/{groups[0].name}/{LEAF_NAME}")   # the leaf move
        assert alone["in_child"] is True
        assert "hugetlb" in (groups[0] / "cgroup.subtree_control").read_text()
        # a group holding another process is not rearranged: refused, with the reason
        assert shared["parents"] == [] and "holds processes" in shared["problems"][0]
        assert shared["own"].endswith(groups[1].name)
    finally:
        for group in reversed(groups):
            for leaf in (group / LEAF_NAME, group):
                deadline = time.monotonic() + 10
                while leaf.exists() and time.monotonic() < deadline:
                    try:
                        if leaf == group and (group / "cgroup.subtree_control").exists():
                            (group / "cgroup.subtree_control").write_text("-hugetlb")
                        leaf.rmdir()
                    except OSError:
                        time.sleep(0.1)
        if not enabled_before:
            Path(root, "cgroup.subtree_control").write_text("-hugetlb")


@pytest.mark.timeout(120)
def test_a_v2_group_without_the_controllers_warns_once_and_falls_back_to_rlimits(monkeypatch):
    """A real sandbox on the machine's v2 hierarchy, in a group the memory and
    pids controllers are not delegated to (here they are bound to v1): one
    warning naming the reason and the fallback, never a silent loss."""
    import warnings

    from sandbox import cgroup_setup
    from sandbox import host as host_module

    root = cgroup_setup.unified_root()
    if not os.access(Path(root, "cgroup.procs"), os.W_OK):
        pytest.skip("no writable cgroup v2 hierarchy here")
    group = Path(root, f"sandbox-v2test-{os.getpid()}-sb")
    group.mkdir()
    try:
        monkeypatch.setenv("SANDBOX_CGROUP_PARENT", str(group))
        monkeypatch.setattr(cgroup_setup, "_support", None)
        monkeypatch.setattr(host_module, "_warned", set())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with Sandbox(use_bwrap=True, memory_mb=256, scratch_mb=64, timeout_s=30) as sb:
                assert sb.run("print(6 * 7)").stdout == "42\n"
                assert sb.isolation["memory_cgroup"] is sb.isolation["pids_cgroup"] is False
                print(sb.enforcement)
                assert sb.enforcement["memory"].startswith("rlimits: address space 128 MiB")
            Sandbox(use_bwrap=True, memory_mb=256, scratch_mb=64).close()   # no second warning
        lines = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        print(lines)
        assert len(lines) == 1 and "\n" not in lines[0]
        assert "memory_cgroup, pids_cgroup" in lines[0] and "cgroup v2" in lines[0]
        assert "not delegated" in lines[0] and "falls back to rlimits" in lines[0]
    finally:
        monkeypatch.setattr(cgroup_setup, "_support", None)
        group.rmdir()
