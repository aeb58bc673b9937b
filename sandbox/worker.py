"""The sandbox worker: a persistent REPL serving one host over two pipes.

Started by sandbox.host as `python -I -S -B -c <bootstrap>`; says `hello`
(its pid), reads the `init` frame, confines itself (sandbox.confine), answers
`ready`, then serves `run`, `get` and `set` until the host closes the pipe.
Model code runs in the main thread; a watchdog thread interrupts it at the
soft deadline.
"""
from __future__ import annotations

import builtins
import ctypes
import os
import signal
import sys
import threading
import time
from _queue import SimpleQueue  # the C queue: `queue` would import more at start-up

from sandbox import confine, protocol, proxy
from sandbox.output import BoundedOutput, format_error

TYPE_CHECKING = False  # `typing` would cost start-up time in every worker
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# SIGURG's default action is "ignore", so model code resetting it kills nothing.
TIMER_SIGNAL = signal.SIGURG
# Unwinding a runaway recursion costs ~10 us per frame: at the millions of
# frames a raised limit allows, the soft timeout would take minutes to land.
MAX_RECURSION_LIMIT = 50_000


class ExecutionTimeout(TimeoutError):
    """Raised inside model code when its run exceeds the soft time limit."""
    limit_s = 0.0

    def __init__(self, *args: object):
        super().__init__(*(args or (
            f"code ran longer than {self.limit_s:g}s and was interrupted (REPL state is kept)",)))


ExecutionTimeout.__module__ = "builtins"  # shown to the model as "ExecutionTimeout: ..."

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.c_void_p)


class Watchdog:
    """Soft timeout: raises ExecutionTimeout in the main thread at the deadline
    (and again every REFIRE_S if model code swallows it). Async exceptions do
    not depend on signal handlers model code can replace; the extra signal only
    wakes a blocking syscall (sleep, read) so the exception gets delivered.
    Pure-C loops (a catastrophic regex) are beyond it: the host's kill is.
    It cannot be paused: time inside host calls counts too (the host bounds
    its own work by the same deadline), so no model thread can hold it off."""

    REFIRE_S = 0.2

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._main = threading.main_thread().ident or 0
        self._deadline: float | None = None

    def start(self) -> None:
        threading.Thread(target=self._loop, name="sandbox-watchdog", daemon=True).start()

    def arm(self, seconds: float) -> None:
        with self._cond:
            self._deadline = time.monotonic() + seconds
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None
        _set_async_exc(self._main, None)  # drop an interrupt raised but not yet delivered

    def _loop(self) -> None:
        with self._cond:
            while True:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                _set_async_exc(self._main, id(ExecutionTimeout))  # CPython: id() is the address
                signal.pthread_kill(self._main, TIMER_SIGNAL)
                self._deadline = time.monotonic() + self.REFIRE_S


class Worker:
    def __init__(self, cmd_fd: int, reply_fd: int, output_fd: int, config: dict[str, Any]):
        self.cmd_fd, self.reply_fd = cmd_fd, reply_fd
        # ONE reader of the command pipe (the reader thread): it routes replies
        # to the host call waiting for them and everything else to the main
        # loop, so no model thread can swallow a frame meant for someone else,
        # and no interrupt can land in the middle of reading a frame.
        self._write_lock = threading.Lock()       # frames from several threads never interleave
        self._commands: SimpleQueue = SimpleQueue()
        self._waiters: dict[int, list[Any]] = {}  # call id -> [lock released on reply, reply]
        self._call_ids = iter(range(1, 1 << 62))
        self.max_frame_bytes = int(config.get("max_frame_bytes") or protocol.MAX_FRAME_BYTES)
        self.max_frame_items = config.get("max_frame_items")
        self.watchdog = Watchdog()  # its thread starts after confinement (see main)
        self.output = BoundedOutput(output_fd)
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        self.namespace.update(proxy.build_proxies(config["host"], self._host_call))
        self.runs = 0
        self.sources: dict[str, str] = {}  # <repl-N> -> code, for tracebacks
        self.handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "run": self._run, "get": self._get, "set": self._set,
        }

    # -- serving ---------------------------------------------------------------
    def start_reader(self) -> None:
        threading.Thread(target=self._read_loop, name="sandbox-reader", daemon=True).start()

    def _read_loop(self) -> None:
        while True:
            try:
                message = protocol.read_frame(self.cmd_fd)
            except (protocol.ChannelClosed, protocol.ProtocolError, OSError):
                os._exit(0)  # the host is gone or closed us: nothing left to serve
            if message.get("op") != "reply":
                self._commands.put(message)
                continue
            slot = self._waiters.pop(message.get("id"), None)  # type: ignore[arg-type]
            if slot is not None:  # else: a late reply to a call model code abandoned
                slot[1] = message
                slot[0].release()

    def send(self, frame: bytes) -> None:
        with self._write_lock:
            protocol.write_all(self.reply_fd, frame)

    def serve(self) -> None:
        while True:
            message = self._commands.get()
            handler = self.handlers.get(message.get("op"))
            if handler is None:
                continue
            try:
                reply = handler(message)
            except ExecutionTimeout:  # landed in our own code after model code ended
                self._stop_watchdog()
                reply = {"op": "done", "stdout": "", "cut": 0, "timed_out": True,
                         "error": format_error(ExecutionTimeout(), self.sources)}
            except Exception as exc:  # a bug of ours must not take the REPL state down
                reply = self._internal_error(message, exc)
            self.send(reply if isinstance(reply, bytes) else protocol.encode(reply))

    @staticmethod
    def _internal_error(message: dict[str, Any], exc: Exception) -> dict[str, Any]:
        text = f"sandbox internal error: {type(exc).__name__}: {exc}"
        if message.get("op") == "run":
            return {"op": "done", "stdout": "", "cut": 0, "timed_out": False, "error": text}
        return {"op": "value", "ok": False, "error": text}

    def _stop_watchdog(self) -> None:
        while True:
            try:
                self.watchdog.disarm()
                return
            except ExecutionTimeout:  # an interrupt delivered mid-disarm: disarm again
                continue

    def _run(self, message: dict[str, Any]) -> dict[str, Any]:
        self.runs += 1
        filename, code = f"<repl-{self.runs}>", message["code"]
        ExecutionTimeout.limit_s = message["timeout_s"]
        self.output.reset(message["output_limit"])
        sys.stdout = sys.stderr = self.output  # model code may have replaced them
        error, timed_out = None, False
        try:
            self.sources[filename] = code
            compiled = compile(code, filename, "exec")
            self.watchdog.arm(message["timeout_s"])
            try:
                exec(compiled, self.namespace)
            finally:
                self._stop_watchdog()
        except BaseException as exc:  # model errors are data for the model, not our crash
            self._stop_watchdog()
            timed_out = isinstance(exc, ExecutionTimeout)
            error = format_error(exc, self.sources)
        stdout, cut = self.output.take()
        return {"op": "done", "stdout": stdout, "cut": cut, "error": error, "timed_out": timed_out}

    def _get(self, message: dict[str, Any]) -> dict[str, Any] | bytes:
        name = message["name"]
        if name not in self.namespace:
            return {"op": "value", "ok": False,
                    "error": f"name {name!r} is not defined in the REPL"}
        try:
            text = proxy.dumps_strict(self.namespace[name])
        except (TypeError, ValueError, RecursionError) as exc:
            return {"op": "value", "ok": False,
                    "error": f"value of {name!r} is not JSON-serialisable ({exc})"}
        except MemoryError:
            return {"op": "value", "ok": False,
                    "error": f"value of {name!r} is too large to encode"}
        data = text.encode("utf-8", "backslashreplace")
        if len(data) > message["max_bytes"]:
            return {"op": "value", "ok": False, "error":
                    f"value of {name!r} too large: {len(data)} bytes > limit {message['max_bytes']}"}
        try:  # the host would refuse (and kill us for) a frame with more values
            protocol.check_items(data, self.max_frame_items)
        except ValueError as exc:
            return {"op": "value", "ok": False, "error": f"value of {name!r}: {exc}"}
        # The value inline (not as a JSON string inside the frame, which escaping
        # could make up to 6x larger than the limit the host reads frames with).
        payload = b'{"op":"value","ok":true,"value":' + data + b"}"
        return protocol.HEADER.pack(len(payload)) + payload

    def _set(self, message: dict[str, Any]) -> dict[str, Any]:
        self.namespace[message["name"]] = message["value"]
        return {"op": "value", "ok": True, "value": None}

    # -- host calls (from any model thread) -----------------------------------
    def _host_call(self, target: str, kind: str, member: str | None,
                   args: tuple, kwargs: dict) -> Any:
        call_id = next(self._call_ids)
        request = {"op": "call", "id": call_id, "target": target, "kind": kind,
                   "member": member, "args": list(args), "kwargs": kwargs}
        try:
            frame = protocol.encode(request, max_bytes=self.max_frame_bytes)
            protocol.check_items(frame, self.max_frame_items)  # the host would refuse it
        except (TypeError, ValueError) as exc:
            raise TypeError(f"arguments to {target} must be JSON-serialisable: {exc}") from None
        # Time spent waiting here counts against the run's limit: the watchdog
        # keeps running, and the host bounds its own work by the same deadline.
        waiter = threading.Lock()
        waiter.acquire()
        slot: list[Any] = [waiter, None]
        self._waiters[call_id] = slot
        try:
            self.send(frame)
            waiter.acquire()
        finally:
            self._waiters.pop(call_id, None)
        reply = slot[1]
        if reply.get("ok"):
            return reply.get("value")
        raise proxy.rebuild_error(str(reply.get("error_type")), str(reply.get("error")),
                                  reply.get("args"))


def _cap_recursion_limit() -> None:
    raw_setter = sys.setrecursionlimit

    def setrecursionlimit(limit: int) -> None:
        """Set the recursion limit (capped at MAX_RECURSION_LIMIT in this sandbox)."""
        raw_setter(min(int(limit), MAX_RECURSION_LIMIT))

    sys.setrecursionlimit = setrecursionlimit


def _confine(config: dict[str, Any]) -> dict[str, Any]:
    """Apply every requested layer; report which ones took effect."""
    if config["pdeathsig"]:
        confine.die_with_parent(signal.SIGKILL)
    limits = config["limits"]
    notes: list[str] = []
    report = {"rlimits": confine.apply_rlimits(**limits)}
    if not confine.drop_capabilities():
        notes.append("could not drop capabilities")
    no_new_privs = confine.set_no_new_privs()
    landlock, scoped = confine.apply_landlock(
        config["read_paths"], config["write_paths"], config.get("landlock_max_abi"))
    report["landlock"] = no_new_privs and landlock
    report["landlock_scope"] = no_new_privs and scoped
    program = bytes.fromhex(config["seccomp_bpf"]) if config.get("seccomp_bpf") else None
    report["seccomp"] = no_new_privs and confine.install_seccomp(program)
    return {"isolation": report, "notes": notes}


def main(cmd_fd: int, reply_fd: int, output_fd: int) -> None:
    # Our pid as we see it (inside bwrap's pid namespace): the host compiles the
    # seccomp program's "signals only to yourself" rules for it.
    protocol.write_all(reply_fd, protocol.encode({"op": "hello", "pid": os.getpid()}))
    config = protocol.read_frame(cmd_fd)
    worker = Worker(cmd_fd, reply_fd, output_fd, config)
    devnull = os.open(os.devnull, os.O_RDWR)  # before Landlock, which would refuse it later
    ready = _confine(config)
    worker.watchdog.start()  # after confinement: both layers bind only later threads
    worker.start_reader()
    for path in config["drop_sys_path"]:  # our package dirs are not the model's to import
        while path in sys.path:
            sys.path.remove(path)
    sys.path.extend(config["import_paths"])  # stdlib + what the host chose to expose
    _cap_recursion_limit()
    signal.signal(TIMER_SIGNAL, lambda signum, frame: None)  # see Watchdog
    protocol.write_all(reply_fd, protocol.encode({"op": "ready", **ready}))
    # Start-up errors went to the host's log file; from now on C-level writes
    # to fds 1 and 2 must not reach anything (Python-level ones are captured).
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    worker.serve()
