"""The template process sandbox workers are forked from (the host side is
sandbox.fork_server).

Starting a worker interpreter and importing the worker costs ~30 ms of CPU per
sandbox. The template pays that once per host process, then forks a worker per
sandbox into namespaces bubblewrap has already built:

    host: bwrap --block-fd ...   builds the sandbox (root, /tmp, /proc, uid map,
                                 no capabilities), then its pid 1 blocks
    template: setns(pid) + fork  the child is born in that pid namespace
    child: setns(user, mount, net, ipc, uts, cgroup), chdir, setsid, fds,
           then sandbox.worker.main: the same hello/init/confine as ever
           (rlimits, capabilities dropped, no-new-privs, Landlock, seccomp).

The template never runs model code, reads no credentials (its environment is
the worker's scrubbed one) and keeps no thread, so a fork copies nothing a
worker should not have. It reports each child's exit status to the host, which
is the only process that could not learn it otherwise.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
from types import CodeType

from sandbox import confine, worker

# Where the template imported our package from: a host path, never shown to a worker.
HOST_LIB = os.path.dirname(os.path.dirname(os.path.abspath(worker.__file__)))

CLONE_NEWPID = 0x20000000   # the other namespaces' flags come from the host (fork_server)
# Stdlib modules model code imports in most questions, imported once here so a
# sandbox does not pay them again (~9 ms of CPU each time). Never modules with
# per-process state a fork would share (random, uuid, tempfile, secrets).
COMMON_IMPORTS = ("ast", "collections", "functools", "itertools", "json", "math", "re",
                  "string", "textwrap", "typing")
MAX_MESSAGE = 4096
FDS_PER_REQUEST = 5      # bwrap's pid 1 (a pidfd), command, reply, output mirror, stderr


def _setns(fd: int, flags: int) -> None:
    if confine._libc.setns(fd, flags) != 0:
        err = confine.ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _moved(path: str, host: str, inside: str) -> str:
    ours = path == host or path.startswith(host + os.sep)
    return inside + path[len(host):] if ours else path


def _recoded(code: CodeType, host: str, inside: str) -> CodeType:
    consts = tuple(_recoded(c, host, inside) if isinstance(c, CodeType) else c
                   for c in code.co_consts)
    return code.replace(co_filename=_moved(code.co_filename, host, inside), co_consts=consts)


def _relocate(host: str, inside: str) -> None:
    """Our modules came from the host's copy of the package; a worker sees it at
    `inside` (bwrap binds it there). Point the loaded modules, their code, their
    path constants and the import path there, so no host path shows through
    (tracebacks, `__file__`) and a later import of ours, in a worker, resolves
    inside. Done once in the template: every fork inherits it, unwritten."""
    def moved(path: str | None) -> str | None:
        return _moved(path, host, inside) if path else path

    recoded: set[int] = set()    # a function reached twice (imported elsewhere) moves once
    sys.path[:] = [moved(p) for p in sys.path]
    for module in list(sys.modules.values()):
        spec = getattr(module, "__spec__", None)
        if not (spec and spec.origin and moved(spec.origin) != spec.origin):
            continue
        module.__file__ = spec.origin = moved(spec.origin)
        module.__cached__ = spec.cached = moved(spec.cached)
        if getattr(module.__loader__, "path", None):
            module.__loader__.path = moved(module.__loader__.path)
        if spec.submodule_search_locations is not None:
            module.__path__[:] = spec.submodule_search_locations[:] = [
                moved(p) for p in spec.submodule_search_locations]
        for name, value in list(vars(module).items()):
            if isinstance(value, str) and not name.startswith("__"):   # dunders: done above
                setattr(module, name, moved(value))   # e.g. a directory worked out from __file__
            members = [value, *vars(value).values()] if isinstance(value, type) else [value]
            for member in members:
                function = getattr(member, "__func__", getattr(member, "fget", member))
                code = getattr(function, "__code__", None)
                if (isinstance(code, CodeType) and id(function) not in recoded
                        and moved(code.co_filename) != code.co_filename):
                    function.__code__ = _recoded(code, host, inside)
                    recoded.add(id(function))


def _become_worker(ns_fd: int, flags: int, cwd: str, fds: list[int]) -> None:
    """In the forked child: join the sandbox, keep only the worker's fds, serve."""
    cmd_fd, reply_fd, output_fd, stderr_fd = fds
    _setns(ns_fd, flags)          # from here on, bwrap's root is our root
    os.chdir(cwd)
    os.setsid()                   # as bwrap --new-session: no controlling terminal
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(stderr_fd, 2)
    keep = sorted({0, 1, 2, cmd_fd, reply_fd, output_fd})
    for low, high in zip(keep, [*keep[1:], 1 << 20]):
        os.closerange(low + 1, high)   # the host socket, ns handles, siblings' pidfds
    worker.main(cmd_fd, reply_fd, output_fd)


def _fork(request: dict, fds: list[int]) -> int:
    ns_fd, *worker_fds = fds
    _setns(ns_fd, CLONE_NEWPID)   # only our children's pid namespace changes
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _become_worker(ns_fd, request["flags"], request["cwd"], worker_fds)
        except BaseException as exc:  # noqa: BLE001 - the child must never return into the loop
            os.write(2, f"sandbox worker could not start: {exc}\n".encode(errors="replace"))
            code = 70
        os._exit(code)
    return pid


def _send(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    socket.send_fds(sock, [json.dumps(message).encode()], list(fds))


def serve(sock_fd: int, inside_lib: str) -> None:
    """Fork requests in, pids (with a pidfd) and exit statuses out, until the
    host closes its end or dies."""
    confine.die_with_parent(signal.SIGKILL)
    for name in COMMON_IMPORTS:
        __import__(name)
    _relocate(HOST_LIB, inside_lib)   # last: the template imports nothing after this
    sock = socket.socket(fileno=sock_fd)
    poller = select.poll()
    poller.register(sock_fd, select.POLLIN)
    children: dict[int, tuple[int, int]] = {}      # pidfd -> (pid, request id)
    while True:
        for fd, _ in poller.poll():
            if fd != sock_fd:
                pid, rid = children.pop(fd)
                poller.unregister(fd)
                _, status = os.waitpid(pid, 0)
                os.close(fd)
                _send(sock, {"exit": rid, "status": status})
                continue
            data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, FDS_PER_REQUEST)
            if not data:
                return
            request = json.loads(data)
            try:
                if len(fds) != FDS_PER_REQUEST:
                    raise OSError(f"expected {FDS_PER_REQUEST} fds, got {len(fds)}")
                pid = _fork(request, fds)
            except OSError as exc:
                _send(sock, {"id": request["id"], "error": str(exc), "errno": exc.errno})
                continue
            finally:
                for received in fds:
                    os.close(received)
            pidfd = os.pidfd_open(pid)
            children[pidfd] = (pid, request["id"])
            poller.register(pidfd, select.POLLIN)
            _send(sock, {"id": request["id"], "pid": pid}, [pidfd])
