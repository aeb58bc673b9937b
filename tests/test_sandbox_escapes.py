"""Escape attempts against the real sandbox, with and without bubblewrap.

Each test asserts the specific way the attempt fails AND that the sandbox
keeps serving afterwards (or restarts cleanly with the documented message).
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from sandbox import Sandbox, SandboxError
from sandbox.host import LOST_STATE, RESTART_NOTICE

RESTART_HEAD = RESTART_NOTICE.split("(")[0]


SANDBOX_DEFAULTS = {"timeout_s": 20}   # for make_sandbox (tests/conftest.py)


@pytest.fixture
def sb(make_sandbox) -> Sandbox:
    return make_sandbox()


def still_serving(sb: Sandbox, expect_state: bool = True) -> None:
    """The next run works; with state kept, `marker` set before is still there."""
    result = sb.run("print('alive', globals().get('marker'))")
    assert result.error is None, result.error
    assert ("alive 42" if expect_state else "alive None") in result.stdout


def fails_with(result, *names: str) -> str:
    assert result.error is not None, f"expected failure, got stdout={result.stdout!r}"
    last = result.error.strip().splitlines()[-1]
    assert any(last.startswith(name) for name in names), result.error
    return last


def test_all_layers_active_here(sb, mode):
    """This machine: Landlock ABI >= 6 (kernel 6.18), writable memory and pids cgroups."""
    assert sb.isolation == {"bwrap": mode == "bwrap", "seccomp": True, "landlock": True,
                            "landlock_scope": True, "rlimits": True, "memory_cgroup": True,
                            "pids_cgroup": True, "scratch_cap": mode == "bwrap"}


def test_read_etc_shadow(sb):
    sb.run("marker = 42")
    result = sb.run("print(open('/etc/shadow').read())")
    fails_with(result, "FileNotFoundError", "PermissionError")
    assert "root:" not in result.stdout
    # a symlink planted in scratch does not help either
    fails_with(sb.run("import os; os.symlink('/etc/shadow', 'sh'); open('sh').read()"),
               "FileNotFoundError", "PermissionError")
    still_serving(sb)


def test_read_aws_credentials_and_project_files(make_sandbox, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    creds = home / ".aws" / "credentials"
    creds.write_text("[default]\naws_secret_access_key = SEKRIT-FROM-HOME\n")
    monkeypatch.setenv("HOME", str(home))
    sb = make_sandbox()
    sb.run("marker = 42")
    for path in ("~/.aws/credentials", str(creds), "/root/.aws/credentials",
                 str(Path(__file__).resolve().parents[1] / "pyproject.toml")):
        result = sb.run(f"import os; print(open(os.path.expanduser({path!r})).read())")
        fails_with(result, "FileNotFoundError", "PermissionError")
        assert "SEKRIT" not in result.stdout
    still_serving(sb)


def test_host_environment_is_not_visible(make_sandbox, monkeypatch):
    secrets = {"AWS_SECRET_ACCESS_KEY": "aws-sekrit-value", "OPENAI_API_KEY": "sk-sekrit-value",
               "AWS_ACCESS_KEY_ID": "AKIASEKRIT"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    sb = make_sandbox()
    code = """
import os
print(sorted(os.environ))
for path in ('/proc/self/environ', '/proc/1/environ', f'/proc/{os.getppid()}/environ'):
    try:
        print(path, open(path, 'rb').read())
    except OSError as exc:
        print(path, type(exc).__name__)
"""
    result = sb.run(code)
    assert result.error is None, result.error
    for name, value in secrets.items():
        assert name not in result.stdout and value not in result.stdout
    assert "HOME" in result.stdout and "PATH" in result.stdout


def test_write_outside_scratch(sb, tmp_path):
    sb.run("marker = 42")
    outside = tmp_path / "outside.txt"
    for path in (str(outside), "/usr/sandbox-escape.txt", "/etc/sandbox-escape.txt"):
        result = sb.run(f"open({path!r}, 'w').write('pwned')")
        fails_with(result, "PermissionError", "FileNotFoundError", "OSError")
        assert not os.path.exists(path)
    assert sb.run("open('inside.txt', 'w').write('ok')").error is None
    if sb.scratch_dir is None:  # bwrap: scratch is the sandbox's own tmpfs
        assert sb.run("print(open('inside.txt').read())").stdout == "ok\n"
    else:
        assert Path(sb.scratch_dir, "inside.txt").read_text() == "ok"
    still_serving(sb)


def test_tmp_is_private_and_capped(sb, mode):
    """bwrap: /tmp is a 64 MiB tmpfs of its own; without bwrap the host's /tmp
    is simply not writable. Either way it cannot eat the host's RAM or disk."""
    sb.run("marker = 42")
    code = "f = open('/tmp/big', 'wb')\nfor _ in range(100): f.write(b'x' * 2**20)\nf.close()"
    last = fails_with(sb.run(code), "OSError", "PermissionError")
    if mode == "bwrap":
        assert "No space left" in last
    assert not os.path.exists("/tmp/big")
    still_serving(sb)


def test_socket_to_loopback(sb):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        sb.run("marker = 42")
        result = sb.run(f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)")
        fails_with(result, "PermissionError")
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()
    still_serving(sb)


@pytest.mark.parametrize("code, error", [
    ("import subprocess; subprocess.run(['id'])", "PermissionError"),
    ("import os; os.fork()", "PermissionError"),
    ("import os\nwhile True: os.fork()", "PermissionError"),          # fork bomb
    ("import os; os.execv('/bin/sh', ['sh'])", "PermissionError"),
    ("import pty; pty.spawn('/bin/sh')", "OSError"),
    ("import os; os.kill(os.getppid(), 9)", "PermissionError"),
    ("import os; os.kill(1, 9)", "PermissionError"),
])
def test_process_escapes(sb, code, error):
    sb.run("marker = 42")
    fails_with(sb.run(code), error)
    still_serving(sb)


def test_threads_started_by_model_code_are_confined(sb):
    code = ("import threading, socket\nseen = []\n"
            "def attempt():\n"
            "    try:\n        socket.socket()\n        seen.append('socket opened')\n"
            "    except OSError as exc:\n        seen.append(type(exc).__name__)\n"
            "    try:\n        open('/etc/passwd').read()\n        seen.append('read')\n"
            "    except OSError as exc:\n        seen.append(type(exc).__name__)\n"
            "t = threading.Thread(target=attempt); t.start(); t.join()\nprint(seen)")
    result = sb.run(code)
    assert result.error is None, result.error
    assert result.stdout.startswith("['PermissionError', ")
    assert "read" not in result.stdout


def test_os_system_and_ctypes_libc(sb):
    sb.run("marker = 42")
    result = sb.run("import os; print(os.system('echo pwned > pwned.txt'))")
    assert result.error is None and result.stdout.strip() != "0"
    code = """
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
print('system', libc.system(b'echo pwned > pwned.txt'))
print('fork', libc.fork(), errno.errorcode[ctypes.get_errno()])
print('socket', libc.syscall(41, 2, 1, 0), errno.errorcode[ctypes.get_errno()])
print('ptrace', libc.ptrace(16, 1, 0, 0), errno.errorcode[ctypes.get_errno()])
"""
    result = sb.run(code)
    assert result.error is None, result.error
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["system"] != "0"
    assert lines["fork"] == "-1 EPERM" and lines["socket"] == "-1 EPERM"
    assert lines["ptrace"] == "-1 EPERM"
    assert sb.run("import os; print(os.path.exists('pwned.txt'))").stdout == "False\n"
    still_serving(sb)


def test_memory_bomb(make_sandbox):
    sb = make_sandbox(memory_mb=512)
    sb.run("marker = 42")
    fails_with(sb.run("x = bytearray(4 * 1024**3)"), "MemoryError")
    fails_with(sb.run("blocks = []\nwhile True: blocks.append(bytearray(64 * 1024**2))"),
               "MemoryError")
    sb.run("del blocks")
    still_serving(sb)


def test_file_size_and_open_file_limits(make_sandbox):
    sb = make_sandbox(file_limit_mb=1)
    sb.run("marker = 42")
    last = fails_with(sb.run("open('big.bin', 'wb').write(b'x' * 2 * 1024**2)"), "OSError")
    assert "File too large" in last
    last = fails_with(sb.run("handles = [open('f%d' % i, 'w') for i in range(1000)]"), "OSError")
    assert "Too many open files" in last
    still_serving(sb)


@pytest.mark.timeout(60)
def test_cpu_time_limit_is_a_last_backstop(make_sandbox):
    """RLIMIT_CPU bounds the worker's whole life, even if wall-clock limits are generous."""
    sb = make_sandbox(cpu_limit_s=1, timeout_s=30)
    result = sb.run("while True:\n    try:\n        while True: sum(range(10**6))\n"
                    "    except BaseException: pass")
    assert "killed by SIGXCPU" in result.error or "killed by SIGKILL" in result.error
    assert LOST_STATE in result.error
    assert sb.run("print('alive')").stdout.startswith(RESTART_HEAD)


@pytest.mark.timeout(60)
def test_infinite_loop_soft_timeout_keeps_state(make_sandbox):
    sb = make_sandbox(timeout_s=0.5, grace_s=2)
    sb.run("marker = 42")
    result = sb.run("while True: pass")
    assert result.timed_out
    assert "ExecutionTimeout" in result.error and "state is kept" in result.error
    # SIGALRM ignored first: our interrupt does not use it, the loop still stops
    result = sb.run("import signal, time\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                    "signal.alarm(1)\nwhile True: pass")
    assert result.timed_out and "state is kept" in result.error
    # a blocking sleep is interrupted too
    assert sb.run("import time; time.sleep(30)").timed_out
    # a per-run limit overrides the sandbox's, both ways
    assert sb.run("import time; time.sleep(1); print('slept')", timeout_s=10).stdout == "slept\n"
    assert "longer than 0.2s" in sb.run("while True: pass", timeout_s=0.2).error
    still_serving(sb)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("code", [
    "import re; re.match('(a+)+$', 'a' * 40 + 'b')",                    # catastrophic regex (C loop)
    # swallows every interrupt
    "import time\nwhile True:\n    try:\n        time.sleep(0.01)\n    except BaseException:\n        pass",
    "import signal, time\nsignal.signal(signal.SIGURG, signal.SIG_IGN)\ntime.sleep(60)",
])
def test_hard_backstop_kills_and_restarts(make_sandbox, code):
    sb = make_sandbox(timeout_s=0.5, grace_s=0.5)
    sb.run("marker = 42")
    result = sb.run("print('before the hang')\n" + code)
    assert result.timed_out
    assert "was killed" in result.error and LOST_STATE in result.error
    assert result.stdout == "before the hang\n"  # what it printed survives the kill
    after = sb.run("print('alive', globals().get('marker'))")
    assert after.stdout.startswith(RESTART_HEAD) and "alive None" in after.stdout
    still_serving(sb, expect_state=False)


def test_sys_exit_keeps_state(sb):
    sb.run("marker = 42")
    result = sb.run("import sys; sys.exit(3)")
    assert "SystemExit: 3" in result.error and "state is kept" in result.error
    still_serving(sb)


def test_os_exit_restarts_with_message(sb):
    sb.run("marker = 42")
    result = sb.run("print('last words')\nimport os; os._exit(7)")
    assert "SandboxCrash" in result.error and "exited with status 7" in result.error
    assert result.stdout == "last words\n"
    assert LOST_STATE in result.error
    after = sb.run("print('alive', globals().get('marker'))")
    assert after.stdout.startswith(RESTART_HEAD) and "exited with status 7" in after.stdout
    assert "alive None" in after.stdout


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff", b"\x00\x00\x00\x05hello",
                                     b"\x00\x00\x00\x02[]"])
def test_forged_protocol_frames_kill_only_the_worker(sb, garbage):
    """Model code can write to the worker's pipe; the host treats what it reads
    as hostile: an oversized, non-JSON or non-object frame ends that worker."""
    sb.run("marker = 42")
    # The pipes keep the host's descriptor numbers, which are high in a busy
    # host (a full test session), and /proc is closed to model code: try them all.
    code = ("import os\nfor fd in range(3, os.sysconf('SC_OPEN_MAX')):\n    try:\n"
            f"        os.write(fd, {garbage!r})\n    except OSError:\n        pass\n"
            "import time; time.sleep(5)")
    result = sb.run(code)
    assert "SandboxCrash: the REPL worker sent an invalid message" in result.error
    assert LOST_STATE in result.error
    assert sb.run("print('alive')").stdout.startswith(RESTART_HEAD)
    still_serving(sb, expect_state=False)


def test_segfault_restarts_with_message(sb):
    result = sb.run("import ctypes; ctypes.string_at(0)")
    assert "killed by SIGSEGV" in result.error and LOST_STATE in result.error
    still_serving(sb, expect_state=False)


def test_huge_output_is_truncated(make_sandbox):
    sb = make_sandbox(output_limit=1000)
    result = sb.run("print('x' * 1_000_000)\nprint('tail')")
    assert result.truncated and result.error is None
    assert result.stdout.startswith("x" * 1000)
    assert "[output truncated: 999006 more characters not shown (limit 1000)]" in result.stdout
    still_serving(sb, expect_state=False)


def test_deep_recursion(make_sandbox):
    sb = make_sandbox(timeout_s=2, grace_s=1)
    sb.run("marker = 42")
    result = sb.run("def f(n): return f(n + 1)\nf(0)")
    assert "RecursionError" in result.error and "Previous line repeated" in result.error
    still_serving(sb)
    # a lifted limit is capped, so the runaway still ends as an error, state kept
    result = sb.run("import sys; sys.setrecursionlimit(10**7)\ndef g(n): return g(n + 1)\ng(0)")
    assert "RecursionError" in result.error, result.error
    assert sb.run("print(sys.getrecursionlimit())").stdout == "50000\n"
    still_serving(sb)


def test_get_of_unserialisable_and_huge_values(make_sandbox):
    sb = make_sandbox(max_value_bytes=1000)
    sb.run("marker = 42\nimport threading\nlock = threading.Lock()\nbig = 'y' * 5000\n"
           "loop = []; loop.append(loop)\nfn = lambda: 1")
    with pytest.raises(SandboxError, match=r"value of 'lock' is not JSON-serialisable \(type lock\)"):
        sb.get("lock")
    with pytest.raises(SandboxError, match=r"value of 'fn' is not JSON-serialisable \(type function\)"):
        sb.get("fn")
    with pytest.raises(SandboxError, match=r"not JSON-serialisable \(Circular reference"):
        sb.get("loop")
    with pytest.raises(SandboxError, match=r"value of 'big' too large: 5002 bytes > limit 1000"):
        sb.get("big")
    with pytest.raises(SandboxError, match="name 'nope' is not defined in the REPL"):
        sb.get("nope")
    assert sb.get("marker") == 42
    still_serving(sb)


def test_import_paths_are_importable_and_read_only(make_sandbox, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "helper_mod.py").write_text("def triple(x):\n    return 3 * x\n")
    sb = make_sandbox(import_paths=[str(lib)])
    assert sb.run("import helper_mod; print(helper_mod.triple(14))").stdout == "42\n"
    result = sb.run(f"open({str(lib / 'helper_mod.py')!r}, 'a').write('pwned')")
    fails_with(result, "PermissionError", "OSError")
    assert "pwned" not in (lib / "helper_mod.py").read_text()
    # without import_paths nothing outside the standard library is importable
    plain = make_sandbox()
    fails_with(plain.run("import helper_mod"), "ModuleNotFoundError")
    fails_with(plain.run("import rlm_ray"), "ModuleNotFoundError")  # nor the project itself


def test_require_isolation(mode):
    if mode == "bwrap":
        with Sandbox(require_isolation=True) as sb:
            assert all(sb.isolation.values())
    else:
        with pytest.raises(SandboxError, match="required isolation layers are missing: bwrap"):
            Sandbox(require_isolation=True, use_bwrap=False)


def test_host_process_untouched(sb):
    """Sandboxes never change the host's cwd, stdout or environment."""
    cwd, stdout, env = os.getcwd(), sys.stdout, dict(os.environ)
    sb.run("import os; os.chdir('/'); print('x')")
    assert (os.getcwd(), sys.stdout, dict(os.environ)) == (cwd, stdout, env)
