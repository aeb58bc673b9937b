"""Host side of the fork server (the template itself is sandbox.zygote).

A sandbox under bubblewrap is still built by its own bwrap, from the same
allow-list, but bwrap is told to block (`--block-fd`) once the sandbox is set
up instead of starting an interpreter. The worker is forked from a template
that has already started Python and imported the worker, and joins that
sandbox's namespaces. What each sandbox's processes are for:

    bwrap (outside)      holds the namespaces' lifetime: killing it ends them all
    bwrap (pid 1 inside) reaps nothing, blocks; its death kills every process inside
    the worker           the REPL: the model's code runs here

One template per host process (`SANDBOX_FORK=0` starts every worker as its
own interpreter under bwrap instead, as before).
"""
from __future__ import annotations

import errno
import itertools
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
import weakref

from sandbox import cgroup, isolation
from sandbox.process import WorkerProcess, host_marker, kill_sandbox, spawner, tree_cpu_s

FORK_ENV_SWITCH = "SANDBOX_FORK"
# setns flags of the namespaces a worker joins in the child (pid: by the fork itself)
NAMESPACES = {"user": 0x10000000, "mnt": 0x00020000, "net": 0x40000000, "ipc": 0x08000000,
              "uts": 0x04000000, "cgroup": 0x02000000}
CAP_EFFECTIVE = "CapEff:"


def wanted() -> bool:
    return os.environ.get(FORK_ENV_SWITCH, "1") != "0" and hasattr(os, "pidfd_open")


_refused: str | None = None    # why this process cannot fork workers into namespaces


def usable() -> bool:
    return wanted() and _refused is None


def refused() -> str | None:
    return _refused


def _refuse(reason: str) -> None:
    global _refused
    _refused = reason


class TemplateGone(OSError):
    """The template process died or closed its socket."""


class TemplateRefused(OSError):
    """This host may not join a sandbox's namespaces (setns refused): the same
    for every sandbox, so the host stops asking."""


# setns's answers that will not change from one sandbox to the next. Anything
# else (EAGAIN or ENOMEM from fork, say) fails this sandbox only.
_REFUSALS = frozenset({errno.EPERM, errno.EACCES, errno.EINVAL, errno.ENOSYS})


class Template:
    """One running template: a socketpair to it and a reader thread that files
    its replies (pid + pidfd per fork) and the exit statuses of its children."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        lib = os.path.dirname(isolation.package_dir())
        code = (f"import sys; sys.path[:0] = [{lib!r}]; from sandbox.zygote import serve; "
                f"serve({theirs.fileno()}, {isolation.INSIDE_LIB!r})  # sandbox-zygote {host_marker()}")
        # The workers' environment (bwrap would also set PWD); a forked worker's
        # start-up errors go to its own stderr, passed with each fork.
        env = {**isolation.scrubbed_env(isolation.INSIDE_SCRATCH), "PWD": isolation.INSIDE_SCRATCH}
        try:
            self.proc: subprocess.Popen = spawner.popen(
                [*isolation.interpreter_args(), "-c", code], pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env=env, cwd="/", start_new_session=True)
        finally:
            theirs.close()
        self.sock = ours
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._replies: dict[int, tuple[dict, list[int]]] = {}
        self._exits: dict[int, int] = {}
        self._unwanted: set[int] = set()     # exits nobody will ask for (killed on purpose)
        self._closed = False
        self._send_lock = threading.Lock()
        threading.Thread(target=self._read, name="sandbox-template-reader", daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                data, fds, _, _ = socket.recv_fds(self.sock, 4096, 1)
                if not data:
                    break
                message = json.loads(data)
                with self._cond:
                    if "exit" in message:
                        if message["exit"] in self._unwanted:
                            self._unwanted.discard(message["exit"])
                        else:
                            self._exits[message["exit"]] = message["status"]
                    else:
                        self._replies[message["id"]] = (message, fds)
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def alive(self) -> bool:
        return not self._closed and self.proc.poll() is None

    def fork(self, ns_pidfd: int, flags: int, cwd: str, fds: list[int],
             deadline: float) -> tuple[int, int, int]:
        """(request id, host pid, pidfd) of a new worker in the sandbox `ns_pidfd` leads."""
        rid = next(self._ids)
        try:
            with self._send_lock:
                socket.send_fds(self.sock, [json.dumps({"id": rid, "flags": flags, "cwd": cwd})
                                            .encode()], [ns_pidfd, *fds])
        except OSError as exc:
            raise TemplateGone(f"the sandbox template is gone: {exc}") from None
        with self._cond:
            while rid not in self._replies:
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    raise TemplateGone("the sandbox template did not answer")
                self._cond.wait(min(remaining, 1.0))
            reply, got = self._replies.pop(rid)
        if "error" in reply or len(got) != 1:
            for fd in got:
                os.close(fd)
            code = reply.get("errno") or errno.EIO
            failure = TemplateRefused if code in _REFUSALS else OSError
            raise failure(code, f"the sandbox template could not fork a worker: {reply.get('error')}")
        return rid, reply["pid"], got[0]

    def exit_status(self, rid: int, timeout_s: float) -> int | None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while rid not in self._exits and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return self._exits.pop(rid, None)

    def forget(self, rid: int) -> None:
        """A long-lived host must not keep one exit status per sandbox it closed."""
        with self._cond:
            if self._exits.pop(rid, None) is None:
                self._unwanted.add(rid)

    def own_cpu_s(self) -> float:
        """The template's own CPU (forks), not its reaped children's."""
        return tree_cpu_s(self.proc.pid, own_only=True)

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


_lock = threading.Lock()
_template: Template | None = None
_template_pid = 0
_spent_by_closed = 0.0


def template() -> Template:
    """This process's template, started (or restarted, after a crash or a fork) on demand."""
    global _template, _template_pid, _spent_by_closed
    with _lock:
        if _template is None or _template_pid != os.getpid() or not _template.alive:
            if _template is not None and _template_pid == os.getpid():
                _spent_by_closed += _template.own_cpu_s()
                _template.close()
            _template, _template_pid = Template(), os.getpid()
        return _template


def templates_cpu_s() -> float:
    """CPU of this process's templates so far (their own, not their workers')."""
    with _lock:
        live = _template.own_cpu_s() if _template is not None and _template_pid == os.getpid() else 0.0
        return _spent_by_closed + live


def close_all() -> None:
    """Stop this process's template (the next sandbox starts a new one)."""
    global _template, _spent_by_closed
    with _lock:
        if _template is not None and _template_pid == os.getpid():
            _spent_by_closed += _template.own_cpu_s()
            _template.close()
        _template = None


# -- one sandbox: bwrap builds it and blocks; the template forks its worker in --

def blocked_bwrap_argv(plan: isolation.LaunchPlan, block_fd: int, info_fd: int,
                       marker: str) -> list[str]:
    # `true` runs only if the block pipe closes (the host died): the sandbox then ends.
    return [*plan.wrapper, "--block-fd", str(block_fd),
            "--info-fd", str(info_fd), "--", shutil.which("true") or "/bin/true", marker]


def read_child_pid(info_fd: int, deadline: float) -> int:
    """bwrap's --info-fd JSON: the pid (in ours) of the sandbox's pid 1."""
    data = b""
    poller = select.poll()
    poller.register(info_fd, select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            raise OSError("bwrap did not report its sandbox in time")
        chunk = os.read(info_fd, 4096)
        if not chunk:
            break
        data += chunk
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        raise OSError("bwrap did not report its sandbox") from None


def wait_until_built(child_pid: int, bwrap: subprocess.Popen, deadline: float) -> None:
    """bwrap drops its last capability after the root, mounts and uid map are
    in place, right before it blocks: only then may a worker join."""
    pause = 0.0002
    while True:
        try:
            with open(f"/proc/{child_pid}/status") as f:
                caps = next(line for line in f if line.startswith(CAP_EFFECTIVE))
        except (OSError, StopIteration):
            raise OSError("bwrap's sandbox ended while it was being built") from None
        if int(caps.split()[1], 16) == 0:
            return
        if bwrap.poll() is not None or time.monotonic() > deadline:
            raise OSError("bwrap did not finish building the sandbox")
        time.sleep(pause)
        pause = min(pause * 2, 0.01)


def joinable_flags(child_pid: int) -> int:
    """The namespaces of bwrap's sandbox that differ from ours (setns refuses to
    re-enter one's own user namespace)."""
    flags = 0
    for name, flag in NAMESPACES.items():
        try:
            if os.stat(f"/proc/{child_pid}/ns/{name}").st_ino != os.stat(f"/proc/self/ns/{name}").st_ino:
                flags |= flag
        except OSError:
            continue
    return flags


def signal_pidfd(pidfd: int, signum: int = signal.SIGKILL) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signum)
    except (OSError, AttributeError):
        pass


class ForkedWorkerProcess(WorkerProcess):
    """A WorkerProcess whose worker is forked from the template into the
    sandbox its bwrap built, rather than started by bwrap as a new interpreter."""

    def _launch(self, fds: tuple[int, int, int], deadline: float) -> None:
        block_read, self._block_write = os.pipe()
        info_read, info_write = os.pipe()
        self._pidfd, self._rid, self._status = -1, 0, None
        try:
            self.proc = spawner.popen(
                blocked_bwrap_argv(self.plan, block_read, info_write, f"# {host_marker()}"),
                pass_fds=(block_read, info_write), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=self._stderr, env=self.plan.env,
                cwd=self.plan.cwd, start_new_session=True)
        except OSError:
            for fd in (block_read, self._block_write, info_read, info_write):
                os.close(fd)
            raise
        os.close(block_read)
        os.close(info_write)
        self._finalizer = weakref.finalize(self, _kill_forked, self.proc, self.group, [-1])
        try:
            child = read_child_pid(info_read, deadline)
            ns_pidfd = os.pidfd_open(child)
            try:
                wait_until_built(child, self.proc, deadline)
                self._template = template()
                self._rid, self.pid, self._pidfd = self._template.fork(
                    ns_pidfd, joinable_flags(child), isolation.INSIDE_SCRATCH,
                    [*fds, self._stderr.fileno()], deadline)
            except TemplateRefused as exc:
                _refuse(str(exc))
                raise
            finally:
                os.close(ns_pidfd)
        except OSError:
            self._finalizer()
            raise
        finally:
            os.close(info_read)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _kill_forked, self.proc, self.group,
                                           [self._pidfd, self._block_write])

    def processes(self) -> list[int]:
        return [*cgroup.process_tree(self.proc.pid), self.pid]

    def cpu_s(self) -> float:
        return tree_cpu_s(self.proc.pid) + tree_cpu_s(self.pid)

    @property
    def alive(self) -> bool:
        if self._status is not None or self._pidfd < 0:
            return False
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return not poller.poll(0)      # a pidfd turns readable when its process exits

    def kill(self) -> None:
        if self._pidfd >= 0 and self._status is None:
            self._template.forget(self._rid)
        super().kill()      # the finalizer closes the pidfd and the block pipe
        self._pidfd = self._block_write = -1

    def exit_description(self) -> str:
        if self._status is None:
            self._status = self._template.exit_status(self._rid, timeout_s=2)
        if self._status is None:
            return "stopped responding"
        return self._describe(os.waitstatus_to_exitcode(self._status), wrapped=False)


def _kill_forked(bwrap: subprocess.Popen, group, fds: list[int]) -> None:
    """Kill the worker and bwrap (whose pid 1 takes everything inside with it)."""
    if fds[0] >= 0:
        signal_pidfd(fds[0])
    kill_sandbox(bwrap, group)
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
