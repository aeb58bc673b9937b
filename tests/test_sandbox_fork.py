"""The fork server: under bubblewrap a worker is forked from a per-host template
into the sandbox its own bwrap built. What that must not change (every sandbox
test runs this way too), and what only a fork could get wrong: shared state
between sandboxes, descriptors of the template, a dead template."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox import Sandbox, fork_server, isolation
from sandbox.process import WorkerProcess

pytestmark = pytest.mark.skipif(not isolation.bwrap_status()[0] or not fork_server.wanted(),
                                reason="the fork server needs bubblewrap")
SANDBOX_DEFAULTS = {"timeout_s": 20}


@pytest.fixture
def sandboxes():
    made: list[Sandbox] = []

    def make(**opts):
        sb = Sandbox(use_bwrap=True, **{**SANDBOX_DEFAULTS, **opts})
        made.append(sb)
        return sb

    yield make
    for sb in made:
        sb.close()


def _out(sb: Sandbox, code: str) -> str:
    result = sb.run(code)
    assert result.error is None, result.error
    return result.stdout.strip()


def test_workers_are_forked_into_separate_sandboxes(sandboxes):
    first, second = sandboxes(), sandboxes()
    assert isinstance(first._worker, fork_server.ForkedWorkerProcess)
    assert first._worker.pid != second._worker.pid
    # Each worker is in its own pid namespace (bwrap's pid 1, then the worker),
    # with its own private scratch.
    assert _out(first, "import os; print(os.getpid())") == "2"
    assert _out(second, "import os; print(os.getpid())") == "2"
    _out(first, "open('/scratch/mine', 'w').write('first')")
    assert _out(second, "import os; print(os.path.exists('/scratch/mine'))") == "False"
    assert _out(first, "import socket; print(socket.gethostname())") == "sandbox"
    # As under bwrap alone: three processes, all in the sandbox's cgroup.
    assert len(first._worker.processes()) == 3


def test_a_forked_worker_holds_only_its_own_descriptors(sandboxes):
    code = ("import os, stat\n"
            "kinds = []\n"
            "for fd in range(256):\n"
            "    try:\n"
            "        mode = os.fstat(fd).st_mode\n"
            "    except OSError:\n"
            "        continue\n"
            "    kinds.append('socket' if stat.S_ISSOCK(mode) else 'other')\n"
            "print(len(kinds), kinds.count('socket'))")
    count, sockets = _out(sandboxes(), code).split()
    assert sockets == "0"                 # never the template's channel to the host
    assert int(count) <= 8                # stdio, two pipes, the output mirror, /dev/null


def test_sandboxes_forked_from_one_template_do_not_share_random_state(sandboxes):
    code = "import random, os; print(random.random(), os.urandom(8).hex())"
    first, second = _out(sandboxes(), code), _out(sandboxes(), code)
    assert first.split()[0] != second.split()[0]
    assert first.split()[1] != second.split()[1]


def test_a_killed_worker_is_reported_with_its_signal(sandboxes):
    sb = sandboxes()
    sb.run("x = 1")
    result = sb.run("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert result.error and "killed by SIGKILL" in result.error
    assert _out(sb, "print('back')").endswith("back")   # restarted (forked again)


def test_a_dead_template_is_replaced_and_live_sandboxes_keep_serving(sandboxes):
    before = sandboxes()
    _out(before, "kept = 41")
    template = fork_server.template()
    os.kill(template.proc.pid, signal.SIGKILL)
    template.proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while template.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    after = sandboxes()
    assert fork_server.template() is not template
    assert _out(after, "print(1 + 1)") == "2"
    assert _out(before, "print(kept + 1)") == "42"     # its worker never depended on the template


def test_switching_the_fork_server_off_starts_workers_as_before(sandboxes, monkeypatch):
    monkeypatch.setenv(fork_server.FORK_ENV_SWITCH, "0")
    sb = sandboxes()
    assert type(sb._worker) is WorkerProcess
    assert _out(sb, "import os; print(os.getpid())") == "2"
    assert sb.isolation["bwrap"] and sb.isolation["seccomp"] and sb.isolation["landlock"]


HOST_WITHOUT_SYS_ADMIN = """
import sys
from sandbox import Sandbox, fork_server
with Sandbox(use_bwrap=True, timeout_s=20) as sb:
    print(type(sb._worker).__name__, sb.isolation["bwrap"], sb.run("print(6 * 7)").stdout.strip())
with Sandbox(use_bwrap=True, timeout_s=20) as sb:
    print(type(sb._worker).__name__, bool(fork_server.refused()))
"""


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0,
                    reason="needs root and setpriv to start a host without CAP_SYS_ADMIN")
def test_a_host_that_may_not_join_namespaces_starts_workers_as_before():
    """Without CAP_SYS_ADMIN the template may not setns into bwrap's pid
    namespace: the host falls back to a new interpreter per sandbox, for good."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(["setpriv", "--bounding-set", "-sys_admin", sys.executable, "-c",
                           HOST_WITHOUT_SYS_ADMIN], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["WorkerProcess True 42", "WorkerProcess True"]


NO_HOST_PATH_PROBE = r"""
import os, sys, types
host, found = HOST, []
for name, module in list(sys.modules.items()):
    for attr in ("__file__", "__cached__"):
        if host in (getattr(module, attr, None) or ""):
            found.append(f"{name}.{attr}")
    for value in list(vars(module).values()):
        code = getattr(value, "__code__", None)
        if isinstance(code, types.CodeType) and host in code.co_filename:
            found.append(f"{name}.{code.co_name}")
print(found, host in " ".join(sys.path), os.path.exists(PACKAGE), sys.modules["sandbox.worker"].__file__)
"""


def test_a_forked_worker_shows_no_host_path_of_ours(sandboxes):
    """The template imported our package from its host path; a forked worker
    sees it where an exec'd worker does, and nothing in it names the host path."""
    host, package = os.path.dirname(isolation.package_dir()), isolation.package_dir()
    sb = sandboxes()
    assert isinstance(sb._worker, fork_server.ForkedWorkerProcess)
    code = NO_HOST_PATH_PROBE.replace("HOST", repr(host)).replace("PACKAGE", repr(package))
    found, in_path, exists, worker_file = _out(sb, code).rsplit(" ", 3)
    assert (found, in_path) == ("[]", "False")
    assert worker_file == f"{isolation.INSIDE_LIB}/sandbox/worker.py"
    bound = [p for p in ("/usr", sys.prefix, sys.base_prefix) if package.startswith(p + os.sep)]
    assert exists == str(bool(bound))   # unless the host path lies under a tree bound anyway
    result = sb.run("import json\njson.loads('{')")
    assert "JSONDecodeError" in result.error and host + os.sep + "sandbox" not in result.error


def test_a_fork_that_fails_once_fails_that_sandbox_only(sandboxes):
    """Only setns's refusals (EPERM and kin) hold for every sandbox; any other
    failure of the template (here a request it rejects, as it would EAGAIN
    from fork) fails one start and leaves the fork server in use."""
    sandboxes().run("x = 1")        # a live template
    template = fork_server.template()
    read, write = os.pipe()
    try:
        with pytest.raises(OSError) as failed:
            template.fork(read, 0, "/", [write], time.monotonic() + 20)   # too few fds
    finally:
        os.close(read)
        os.close(write)
    assert not isinstance(failed.value, fork_server.TemplateRefused)
    assert "could not fork a worker" in str(failed.value)
    assert fork_server.usable() and fork_server.refused() is None
    sb = sandboxes()
    assert isinstance(sb._worker, fork_server.ForkedWorkerProcess)
    assert _out(sb, "print(6 * 7)") == "42"


def test_closed_sandboxes_leave_no_exit_status_behind(sandboxes):
    for _ in range(5):
        sandboxes().close()
    sandboxes().run("x = 1")
    template = fork_server.template()
    deadline = time.monotonic() + 10
    while (template._exits or template._unwanted) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not template._exits and not template._unwanted
