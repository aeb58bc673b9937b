"""The Sandbox: a persistent, isolated Python REPL for untrusted (model-written)
code, with a bridge back to a fixed set of host functions.

Each Sandbox owns one worker process and holds no process-wide state (no cwd
changes, no sys.stdout swapping here), so many can serve many threads of one
host at once; one Sandbox serialises its own callers with a lock.
"""
from __future__ import annotations

import json
import keyword
import os
import re
import shutil
import threading
import time
import warnings
import weakref
from typing import Any

from sandbox import cgroup, cgroup_setup, fork_server, isolation, protocol, scratch, seccomp_policy
from sandbox.budget import Budget
from sandbox.dispatch import (HostCallRefused, HostDispatcher, deadline_scope, plain_json,
                              to_jsonable)
from sandbox.fork_server import ForkedWorkerProcess
from sandbox.process import WorkerProcess
from sandbox.results import RunResult, SandboxError

# sb.isolation keys: "bwrap", these, the cgroup's (sandbox.cgroup) and "scratch_cap"
WORKER_LAYERS = ("seccomp", "landlock", "landlock_scope", "rlimits")  # reported by the worker
REDUCED_ENV = "SANDBOX_ALLOW_REDUCED_ISOLATION"
LANDLOCK_ABI_ENV = "SANDBOX_LANDLOCK_MAX_ABI"  # pretend an older kernel (tests, comparisons)
RESTART_NOTICE = ("[sandbox] the REPL worker was restarted ({reason}); variables, functions "
                  "and imports from earlier runs are gone.\n")
LOST_STATE = ("REPL state (variables, functions, imports) was lost; "
              "the next run starts a fresh REPL.")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
HOST_OVERRUN_GRACE_S = 1.0  # after a host function overran the hard limit (see _exchange)
FRAME_SLACK_BYTES = 1024 * 1024   # the envelope, and error text (capped in the worker)
TRUNCATION_MARKER = "\n[output truncated: {cut} more characters not shown (limit {limit})]\n"

_warned: set[frozenset[str]] = set()
_warned_lock = threading.Lock()


def _warn_once(missing: list[str], why: str) -> None:
    key = frozenset(missing)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(f"sandbox running without {', '.join(missing)}{why}; the remaining "
                  "layers still apply", RuntimeWarning, stacklevel=3)


class _WorkerLost(Exception):
    """The worker died or was killed mid-request: its state is gone."""

    def __init__(self, message: str, timed_out: bool = False, stdout: str = ""):
        super().__init__(message)
        self.message, self.timed_out, self.stdout = message, timed_out, stdout


class Sandbox:
    def __init__(self, host_functions: dict[str, Any] | None = None, timeout_s: float = 30,
                 memory_mb: int = 1024, output_limit: int = 20_000,
                 scratch_dir: str | os.PathLike | None = None, require_isolation: bool = False,
                 *, use_bwrap: bool | None = None, grace_s: float = 2.0,
                 max_value_bytes: int = 16 * 1024 * 1024, cpu_limit_s: int = 3600,
                 file_limit_mb: int = 512, start_timeout_s: float = 15.0,
                 import_paths: list[str] | tuple[str, ...] = (), scratch_mb: int = 256,
                 max_tasks: int = 256, allow_reduced_isolation: bool = False):
        for name, value in (("timeout_s", timeout_s), ("memory_mb", memory_mb),
                            ("output_limit", output_limit), ("grace_s", grace_s),
                            ("scratch_mb", scratch_mb), ("max_tasks", max_tasks)):
            if value <= 0:
                raise SandboxError(f"{name} must be positive, got {value!r}")
        self.timeout_s, self.grace_s, self.output_limit = timeout_s, grace_s, output_limit
        self.max_value_bytes = max_value_bytes
        # What the host agrees to read from the worker, checked BEFORE decoding:
        # a value, or a run's output and error text, plus room for the envelope.
        self.max_frame_bytes = max(max_value_bytes, 8 * output_limit) + FRAME_SLACK_BYTES
        self.max_frame_items = max(self.max_frame_bytes // 8, 100_000)
        self.start_timeout_s = start_timeout_s
        self._dispatcher = HostDispatcher(host_functions or {})
        self._require_isolation, self._use_bwrap = require_isolation, use_bwrap
        self._allow_reduced = allow_reduced_isolation or os.environ.get(REDUCED_ENV) == "1"
        self._bwrap_missing, bwrap = "", isolation.wants_bwrap(use_bwrap)
        if bwrap:
            bwrap, self._bwrap_missing = isolation.bwrap_status()
        # Under bwrap the sandbox's own scratch is a private tmpfs (size capped by
        # the kernel, nothing left on the host); otherwise a host folder, on the
        # host's tmpfs where the memory cgroup then charges it to the worker.
        self._owns_scratch = scratch_dir is None
        self._budget = Budget(memory_mb, scratch_mb, max_tasks, file_limit_mb, bwrap,
                              self._owns_scratch)
        self.memory_mb, self.scratch_mb, self.max_tasks = memory_mb, scratch_mb, max_tasks
        self.scratch_dir: str | None = None
        if not self._budget.scratch_in_tmpfs:
            self.scratch_dir = (scratch.make_owned(self._budget.scratch_in_memory)
                                if scratch_dir is None
                                else os.path.realpath(scratch_dir))
            try:
                os.makedirs(self.scratch_dir, exist_ok=True)
            except OSError as exc:
                raise SandboxError(f"cannot use scratch_dir {self.scratch_dir!r}: {exc}") from None
        self._scratch_cleanup: weakref.finalize | None = None
        if self._owns_scratch and self.scratch_dir is not None:  # also when dropped unclosed
            self._scratch_cleanup = weakref.finalize(
                self, shutil.rmtree, self.scratch_dir, ignore_errors=True)
        self._limits = {"memory_mb": memory_mb, "cpu_s": cpu_limit_s,
                        "file_mb": file_limit_mb, "nofile": 256}
        self._import_paths = [os.path.realpath(p) for p in import_paths]
        missing = [p for p in self._import_paths if not os.path.isdir(p)]
        if missing:
            raise SandboxError(f"import_paths are not directories: {', '.join(missing)}")
        self._plan = self._launch_plan(bwrap)
        self._lock = threading.RLock()
        self._host_values: dict[str, Any] = {}   # set() values: host data, restored on restart
        self._worker: WorkerProcess | None = None
        self._lost_reason: str | None = None       # why state was lost, not yet told to a run
        self._closed = False
        try:
            self._start_worker()
        except BaseException:
            self.close()
            raise

    # -- public API ------------------------------------------------------------
    @property
    def isolation(self) -> dict[str, bool]:
        return dict(self._isolation)

    @property
    def enforcement(self) -> dict[str, str]:
        """Which layer bounds memory, tasks and scratch here, in words."""
        return self._budget.describe(self._isolation, self.scratch_dir, self._limits["memory_mb"])

    def run(self, code: str, timeout_s: float | None = None) -> RunResult:
        """Run one block; `timeout_s` overrides the sandbox's limit for this run."""
        if not isinstance(code, str):
            raise SandboxError(f"code must be a str, got {type(code).__name__}")
        limit = self.timeout_s if timeout_s is None else timeout_s
        if limit <= 0:
            raise SandboxError(f"timeout_s must be positive, got {limit!r}")
        with self._lock:
            self._ensure_worker()
            notice = self._take_notice()
            started = time.perf_counter()
            request = {"op": "run", "code": code, "timeout_s": limit,
                       "output_limit": self.output_limit}
            assert self._worker is not None
            self._worker.reset_output()
            try:
                reply = self._exchange(request, expect="done", timeout_s=limit)
            except _WorkerLost as lost:
                return RunResult(notice + _clean(lost.stdout), lost.message, lost.timed_out,
                                 time.perf_counter() - started, False)
            elapsed = time.perf_counter() - started
        stdout, cut, error = reply.get("stdout"), reply.get("cut"), reply.get("error")
        stdout = _clean(stdout) if isinstance(stdout, str) else ""
        cut = cut if isinstance(cut, int) and cut > 0 else 0
        if cut:
            stdout += TRUNCATION_MARKER.format(cut=cut, limit=self.output_limit)
        return RunResult(notice + stdout, None if error is None else _clean(str(error)),
                         reply.get("timed_out") is True, elapsed, cut > 0)

    def get(self, name: str) -> Any:
        """A JSON-safe copy of a REPL variable (SandboxError if it is not one)."""
        with self._lock:
            self._ensure_worker()
            try:
                reply = self._exchange({"op": "get", "name": str(name),
                                        "max_bytes": self.max_value_bytes}, expect="value")
            except _WorkerLost as lost:
                raise SandboxError(lost.message) from None
            if not reply.get("ok"):
                hint = f" ({self._lost_reason}: {LOST_STATE})" if self._lost_reason else ""
                raise SandboxError(f"{reply.get('error')}{hint}")
            return reply.get("value")

    def set(self, name: str, value: Any) -> None:
        """Bind a JSON-safe host value in the REPL namespace (kept across restarts)."""
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise SandboxError(f"not a valid variable name: {name!r}")
        try:
            plain = json.loads(json.dumps(value, default=plain_json))
        except (TypeError, ValueError) as exc:
            raise SandboxError(f"value for {name!r} is not JSON-serialisable ({exc})") from None
        with self._lock:
            self._ensure_worker()
            try:
                self._exchange({"op": "set", "name": name, "value": plain}, expect="value")
            except _WorkerLost as lost:
                raise SandboxError(lost.message) from None
            self._host_values[name] = plain

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._worker is not None:
                self._worker.close()
                self._worker = None
            if self._scratch_cleanup is not None:
                self._scratch_cleanup()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- worker lifecycle ------------------------------------------------------
    def _launch_plan(self, bwrap: bool) -> isolation.LaunchPlan:
        if bwrap:
            return isolation.bwrap_plan(self.scratch_dir, self._import_paths, self.scratch_mb)
        assert self.scratch_dir is not None
        return isolation.direct_plan(self.scratch_dir, self._import_paths)

    def _init_message(self, pid: int) -> dict[str, Any]:
        # memfd_create is refused outright only where no memory cgroup charges it.
        group = self._group
        program = seccomp_policy.program(pid, deny_memfd=not group.active["memory_cgroup"])
        max_abi = os.environ.get(LANDLOCK_ABI_ENV, "")
        return {"op": "init", "host": self._dispatcher.spec_payload(),
                "limits": self._limits, "read_paths": self._plan.read_paths,
                "write_paths": self._plan.write_paths,
                "drop_sys_path": self._plan.lib_paths,
                "import_paths": self._plan.import_paths,
                "pdeathsig": not self._plan.bwrap, "max_frame_bytes": self.max_frame_bytes,
                "max_frame_items": self.max_frame_items,
                "landlock_max_abi": int(max_abi) if max_abi.isdigit() else None,
                "seccomp_bpf": program.hex() if program else None}

    def _start_worker(self) -> None:
        forked = self._plan.bwrap and fork_server.usable()
        try:
            self._worker = self._new_worker(ForkedWorkerProcess if forked else WorkerProcess)
        except SandboxError:
            if not forked or fork_server.usable():
                raise
            # This host may not fork into namespaces (e.g. no CAP_SYS_ADMIN for
            # setns): every sandbox of this process starts as its own interpreter.
            self._worker = self._new_worker(WorkerProcess)
        report = self._worker.ready.get("isolation") or {}
        self._isolation = {"bwrap": self._plan.bwrap,
                           **{layer: bool(report.get(layer)) for layer in WORKER_LAYERS},
                           **self._group.active, "scratch_cap": self._budget.scratch_in_tmpfs}
        self._check_isolation()  # on every (re)start: a restart must not lose a layer quietly
        try:
            for name, value in self._host_values.items():
                self._exchange({"op": "set", "name": name, "value": value}, expect="value")
        except _WorkerLost as lost:
            raise SandboxError(f"restoring set() values failed: {lost.message}") from None

    def _new_worker(self, kind: type[WorkerProcess]) -> WorkerProcess:
        self._group = cgroup.create(self._budget.cgroup_bytes, self.max_tasks)
        try:  # memory_mb bounds all the sandbox's RAM (sandbox.budget)
            self._limits["memory_mb"] = self._budget.address_space_mb(
                self._group.active["memory_cgroup"])
        except SandboxError:
            self._group.destroy()
            raise
        return kind(self._plan, self._init_message, self.start_timeout_s, self.max_frame_bytes,
                    self.max_frame_items, self.output_limit, self._group)

    def _check_isolation(self) -> None:
        missing = [layer for layer, active in self._isolation.items() if not active]
        if self._require_isolation and missing:
            self._drop_worker("required isolation layers are missing")
            raise SandboxError(f"required isolation layers are missing: {', '.join(missing)}"
                               + (f" ({self._bwrap_missing})" if self._bwrap_missing else ""))
        # Without bwrap, Landlock alone keeps host files unreadable and seccomp
        # alone keeps their metadata (chmod, xattrs, inotify...) untouched.
        unsafe = [m for m in ("landlock", "seccomp") if m in missing] if not self._plan.bwrap else []
        if unsafe and not self._allow_reduced:
            self._drop_worker("direct mode without its safety layers")
            raise SandboxError(
                f"refusing to run without bubblewrap and without {', '.join(unsafe)}: model code "
                f"could read or alter host files; pass allow_reduced_isolation=True (or set "
                f"{REDUCED_ENV}=1) to run anyway")
        # Without bwrap and a memory cgroup, nothing caps the scratch folder's total.
        if (not self._plan.bwrap and self._owns_scratch and not self._allow_reduced
                and not self._budget.scratch_bounded(self._isolation["memory_cgroup"])):
            self._drop_worker("direct mode without a total cap on scratch")
            raise SandboxError(
                f"refusing to run without bubblewrap and without a total cap on scratch: "
                f"{self._budget.unbounded_scratch(self.scratch_dir)}; pass "
                f"allow_reduced_isolation=True (or set {REDUCED_ENV}=1) to run anyway")
        support = cgroup_setup.support()
        chosen = set()  # layers the caller turned off on purpose: no warning
        if self._use_bwrap is False:
            chosen |= {"bwrap", "scratch_cap"}
        if not self._owns_scratch:
            chosen.add("scratch_cap")
        if support.turned_off:
            chosen |= set(cgroup.LAYER_BY_CONTROLLER.values())
        unexpected = [m for m in missing if m not in chosen]
        if unexpected:
            reasons = [self._bwrap_missing] if self._bwrap_missing else []
            if set(unexpected) & set(cgroup.LAYER_BY_CONTROLLER.values()):
                reasons.append("; ".join([support.describe(), *self._group.problems])
                               + f"; memory falls back to {self.enforcement['memory']}")
            _warn_once(unexpected, f" ({'; '.join(reasons)})" if reasons else "")

    def _ensure_worker(self) -> None:
        """Restart a dead worker (one that died between requests included)."""
        if self._closed:
            raise SandboxError("the sandbox is closed")
        if self._worker is not None and not self._worker.alive:
            self._drop_worker(f"the REPL worker {self._worker.exit_description()}")
        if self._worker is None:
            self._start_worker()

    def _take_notice(self) -> str:
        """The restart notice owed to the next run's output (told once)."""
        if self._lost_reason is None:
            return ""
        notice, self._lost_reason = RESTART_NOTICE.format(reason=self._lost_reason), None
        return notice

    def _drop_worker(self, reason: str) -> None:
        if self._worker is not None:
            self._worker.close()
            if self._owns_scratch and self.scratch_dir is not None:
                # Lost with the REPL state, as bwrap's tmpfs is; a host tmpfs
                # folder's pages would otherwise outlive the worker's cgroup.
                scratch.empty(self.scratch_dir)
        self._worker, self._lost_reason = None, reason

    # -- one request, with host calls served until its reply -------------------
    def _exchange(self, request: dict[str, Any], expect: str,
                  timeout_s: float | None = None) -> dict[str, Any]:
        worker = self._worker
        assert worker is not None
        try:
            frame = protocol.encode(request)
        except (TypeError, ValueError) as exc:
            raise SandboxError(f"request cannot be sent to the sandbox: {exc}") from None
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s + self.grace_s
        overran = ""
        try:
            worker.channel.send(frame, deadline)
            while True:
                message = worker.channel.receive(deadline)
                if message.get("op") == expect:
                    return message
                if message.get("op") != "call":
                    raise protocol.ProtocolError(f"expected {expect!r}, got {message.get('op')!r}")
                # Host time counts: the host function gets the run's soft deadline
                # (current_deadline()); the hard one does not move, except that a
                # worker is not blamed for a host function's overrun: it gets a
                # moment to take the reply and end the run with its state kept.
                reply = self._serve_call(message, deadline - self.grace_s)
                if time.monotonic() > deadline:
                    overran = (f"{message.get('target')}" + (
                        f".{message['member']}" if message.get("member") else ""))[:100]
                    deadline = time.monotonic() + HOST_OVERRUN_GRACE_S
                worker.channel.send(reply, deadline)
        except protocol.ChannelTimeout:
            limit = timeout_s + self.grace_s
            if overran:
                raise self._lose(worker, "a host function overran", timed_out=True, message=(
                    f"ExecutionTimeout: the host function {overran} ran past the "
                    f"{timeout_s:g}s limit, so the REPL worker was stopped. {LOST_STATE}")) from None
            raise self._lose(worker, f"killed after {limit:g}s", timed_out=True, message=(
                f"ExecutionTimeout: the code ran past the {timeout_s:g}s limit and did not "
                f"stop when interrupted, so the REPL worker was killed after {limit:g}s. "
                f"{LOST_STATE}")) from None
        except protocol.ChannelClosed:
            what = f"the REPL worker {worker.exit_description()}"
            during = "running this code" if expect == "done" else f"a {request['op']}() request"
            raise self._lose(worker, what, message=(
                f"SandboxCrash: {what} while {during}. {LOST_STATE}")) from None
        except protocol.ProtocolError as exc:
            raise self._lose(worker, "it broke the sandbox protocol", message=(
                f"SandboxCrash: the REPL worker sent an invalid message ({exc}) and was "
                f"killed. {LOST_STATE}")) from None
        except BaseException:  # e.g. KeyboardInterrupt inside a host function
            self._drop_worker("the host interrupted a request")
            raise

    def _lose(self, worker: WorkerProcess, reason: str, message: str,
              timed_out: bool = False) -> _WorkerLost:
        """Drop a dead/hung worker, keeping what its last run had printed."""
        printed = worker.output_so_far(self.output_limit)
        self._drop_worker(reason)
        return _WorkerLost(message, timed_out, printed)

    def _serve_call(self, message: dict[str, Any], soft_deadline: float) -> bytes:
        call_id = message.get("id")
        args, kwargs = message.get("args") or [], message.get("kwargs") or {}
        try:
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise HostCallRefused("malformed host call")
            function = self._dispatcher.resolve(message)
            with deadline_scope(soft_deadline):
                value = function(*args, **kwargs)
        except Exception as exc:  # the host function's failure is the model's to handle
            return _error_reply(call_id, exc)
        try:
            reply = {"op": "reply", "id": call_id, "ok": True, "value": value}
            return protocol.encode(reply, default=to_jsonable)
        except (TypeError, ValueError, RecursionError) as exc:
            return _error_reply(call_id, TypeError(
                f"the host function's result cannot cross the sandbox boundary: {exc}"))


def _clean(text: str) -> str:
    """Text safe for any sink (Parquet, logs): lone surrogates become U+FFFD."""
    return LONE_SURROGATE.sub("\ufffd", text)


def _error_reply(call_id: Any, exc: Exception) -> bytes:
    name = "PermissionError" if isinstance(exc, HostCallRefused) else type(exc).__name__
    # Plain args rebuild the same exception inside (KeyError('x') stays KeyError('x'));
    # anything else travels as its message only.
    plain = all(isinstance(a, (str, int, float, bool, type(None))) for a in exc.args)
    args = [isolation.redact(a)[:4000] if isinstance(a, str) else a
            for a in (exc.args if plain else (str(exc),))]
    return protocol.encode({"op": "reply", "id": call_id, "ok": False, "error_type": name,
                            "error": isolation.redact(str(exc))[:4000], "args": args})

