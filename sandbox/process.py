"""One worker process: spawn it from a LaunchPlan, hand it its `init`, wait for
`ready`, kill it. Restart policy lives in sandbox.host; this only knows how
one process starts and ends."""
from __future__ import annotations

import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from sandbox import bytecode, cgroup, protocol, scratch
from sandbox.isolation import LaunchPlan, package_dir
from sandbox.results import SandboxError

STDERR_TAIL_BYTES = 2000
# The output mirror: an 8-byte little-endian length the worker keeps current,
# then the kept output. A sealed memfd of fixed size, so the worker (which
# must be able to write it) cannot grow it: the kernel refuses, not our code.
MIRROR_HEADER_BYTES = 8
F_ADD_SEALS, F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW = 1033, 1, 2, 4


def output_mirror(limit_chars: int) -> int:
    """A fixed-size memfd for `limit_chars` of output (UTF-8: up to 4 bytes each)."""
    fd = os.memfd_create("sandbox-output", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, MIRROR_HEADER_BYTES + 4 * limit_chars + 4)
    import fcntl
    fcntl.fcntl(fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL)
    return fd


class _Spawner:
    """Workers (and bwrap) ask the kernel to kill them when their parent dies,
    and Linux means the parent THREAD. Spawning from one long-lived thread ties
    them to the host process, not to whichever short-lived thread made the
    Sandbox. Re-created after a fork (the child inherits no threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="sandbox-spawner")
                self._pid = os.getpid()
            pool = self._pool
        return pool.submit(subprocess.Popen, *args, **kwargs).result()


spawner = _Spawner()

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int, own_only: bool = False) -> float:
    """CPU seconds so far of `pid` and its descendants (all threads,
    nanosecond schedstat) and of the children they reaped (clock ticks);
    `own_only`: of `pid` alone."""
    total = 0.0
    for member in [pid] if own_only else cgroup.process_tree(pid):
        try:
            for task in os.listdir(f"/proc/{member}/task"):
                with open(f"/proc/{member}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0]) / 1e9
            if own_only:
                continue
            with open(f"/proc/{member}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[13]) + int(fields[14])) / CLOCK_TICKS   # cutime, cstime
        except (OSError, ValueError, IndexError):
            continue   # it exited meanwhile
    return total


class _Spent:
    """CPU of this process's sandbox workers that have ended. A worker is
    SIGKILLed with bwrap, so no parent ever reaps (and accounts) the worker
    itself: its CPU is read just before the kill, or it is lost to every
    tool that sums a process tree."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds = 0.0
        self.workers = 0

    def add(self, seconds: float) -> None:
        with self._lock:
            self.seconds += seconds
            self.workers += 1


ENDED = _Spent()


def ended_workers_cpu_s() -> tuple[float, int]:
    """(CPU seconds, count) of the sandbox workers this process has ended."""
    return ENDED.seconds, ENDED.workers


def host_marker() -> str:
    """Marks command lines (bwrap's, the worker's, the template's) with the
    host's pid and an optional session tag, so a supervisor such as the test
    suite can find exactly the processes it started."""
    marker = f"sandbox-host={os.getpid()}"
    if scratch.session_tag():
        marker += f" sandbox-session={scratch.session_tag()}"
    return marker


def _bootstrap(lib_paths: list[str], *fds: int) -> str:
    return (f"import sys; sys.path[:0] = {lib_paths!r}; "
            f"from sandbox.worker import main; main{fds!r}  # {host_marker()}")


def kill_sandbox(proc: subprocess.Popen, group: cgroup.Cgroup | None = None) -> None:
    """SIGKILL the worker (or bwrap: its pid namespace dies with it), reap it,
    and kill whatever else is left in its cgroup."""
    if proc.poll() is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    if group is not None:
        group.destroy()


class WorkerProcess:
    """A worker started as its own interpreter: `plan.argv` (bwrap, or the bare
    interpreter) with the bootstrap. sandbox.fork_server's subclass forks it
    from a template instead; everything after the start is shared."""

    def __init__(self, plan: LaunchPlan, init: Callable[[int], dict[str, Any]],
                 start_timeout_s: float, max_frame_bytes: int = protocol.MAX_FRAME_BYTES,
                 max_items: int | None = None, output_limit: int = 20_000,
                 group: cgroup.Cgroup | None = None):
        self.plan = plan
        self.group = group
        deadline = time.monotonic() + start_timeout_s
        cmd_read, cmd_write = os.pipe()
        reply_read, reply_write = os.pipe()
        # Start-up failures (import errors, a bad bwrap bind) are written here;
        # the worker points fds 1/2 at /dev/null once it is ready.
        self._stderr = tempfile.TemporaryFile(prefix="sandbox-worker-")
        # The current run's kept output, written through by the worker: what
        # we can still show after killing it (sandbox.worker.BoundedOutput).
        self._output_fd = output_fd = output_mirror(output_limit)
        self._output_size = os.fstat(output_fd).st_size
        bytecode.ensure(package_dir())   # once per process: no compiling in every worker
        try:
            self._launch((cmd_read, reply_write, output_fd), deadline)
        except OSError as exc:
            for fd in (cmd_read, cmd_write, reply_read, reply_write, output_fd):
                os.close(fd)
            self._stderr.close()
            if group is not None:
                group.destroy()
            raise SandboxError(f"cannot start the sandbox worker: {exc}") from None
        os.close(cmd_read)  # the child's ends: keeping them would hide its exit from us
        os.close(reply_write)
        self.channel = protocol.HostChannel(reply_read, cmd_write, max_frame_bytes, max_items)
        self.ready = self._handshake(init, deadline)

    def _launch(self, fds: tuple[int, int, int], deadline: float) -> None:
        argv = [*self.plan.argv, "-c", _bootstrap(self.plan.lib_paths, *fds)]
        self.proc = spawner.popen(
            argv, pass_fds=fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self._stderr, env=self.plan.env, cwd=self.plan.cwd, start_new_session=True)
        # A Sandbox dropped without close() must not leave a process behind.
        self._finalizer = weakref.finalize(self, kill_sandbox, self.proc, self.group)

    def processes(self) -> list[int]:
        """The sandbox's processes (bwrap's included), host pids."""
        return cgroup.process_tree(self.proc.pid)

    def cpu_s(self) -> float:
        """CPU so far of the sandbox's processes and the children they reaped."""
        return tree_cpu_s(self.proc.pid)

    def _handshake(self, init: Callable[[int], dict[str, Any]], deadline: float) -> dict[str, Any]:
        """hello (the worker's pid) -> init (built for that pid) -> ready."""
        try:
            hello = self.channel.receive(deadline)
            if hello.get("op") != "hello" or not isinstance(hello.get("pid"), int):
                raise protocol.ProtocolError("expected hello")
            if self.group is not None:  # no model code has run yet: move the whole tree in
                self.group.add(self.processes())
            self.channel.send(protocol.encode(init(hello["pid"])), deadline)
            ready = self.channel.receive(deadline)
        except (protocol.ChannelClosed, protocol.ChannelTimeout, protocol.ProtocolError) as exc:
            self.kill()
            raise SandboxError(f"the sandbox worker failed to start ({type(exc).__name__}): "
                               f"{self.stderr_tail() or 'no output'}") from None
        if ready.get("op") != "ready":
            self.kill()
            raise SandboxError(f"the sandbox worker sent {ready.get('op')!r} instead of 'ready'")
        return ready

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive:
            ENDED.add(self.cpu_s())
        self._finalizer()   # kills and reaps, once (the same call a dropped Sandbox gets)
        self.channel.close()

    def stderr_tail(self) -> str:
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(size - STDERR_TAIL_BYTES, 0))
            return self._stderr.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def exit_description(self) -> str:
        """Why the process ended, in words a model can act on."""
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "stopped responding"
        return self._describe(code)

    def _describe(self, code: int, wrapped: bool | None = None) -> str:
        # bwrap reports a child killed by signal N as exit status 128+N.
        wrapped = self.plan.bwrap if wrapped is None else wrapped
        signum = -code if code < 0 else (code - 128 if wrapped and code > 128 else 0)
        if signum:
            try:
                return f"was killed by {signal.Signals(signum).name}"
            except ValueError:
                return f"was killed by signal {signum}"
        return f"exited with status {code}"

    def reset_output(self) -> None:
        """Before each run, by the host: a run the worker never starts (it is
        stuck) must not show the previous run's output as its own."""
        try:
            used = int.from_bytes(os.pread(self._output_fd, MIRROR_HEADER_BYTES, 0), "little")
            size = MIRROR_HEADER_BYTES + min(used, self._output_size - MIRROR_HEADER_BYTES)
            os.pwrite(self._output_fd, bytes(size), 0)
        except OSError:
            pass

    def output_so_far(self, limit_chars: int) -> str:
        """The output the current run had printed (for runs that never finished)."""
        try:
            used = int.from_bytes(os.pread(self._output_fd, MIRROR_HEADER_BYTES, 0), "little")
            used = min(used, self._output_size - MIRROR_HEADER_BYTES)
            data = os.pread(self._output_fd, used, MIRROR_HEADER_BYTES)
        except OSError:
            return ""
        return data.decode("utf-8", "replace")[:limit_chars]

    def close(self) -> None:
        # SIGKILL straight away: the worker holds nothing worth flushing, and a
        # polite exit costs ~0.1 s of interpreter shutdown on a loaded machine.
        self.kill()
        self._stderr.close()
        if self._output_fd >= 0:
            os.close(self._output_fd)
            self._output_fd = -1
