"""The RLM's REPL: one `sandbox.Sandbox` with the engine's host functions and
prelude, plus crash recovery. A crashed worker (killed, out of memory) becomes
an error the model reads and a fresh REPL, not a failed question."""
from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlm_ray.engine.context_view import ContextView
from rlm_ray.engine.repl_context import CONTEXT_PRELUDE, HOST_NAME
from rlm_ray.engine.repl_prelude import AFTER_BLOCK, PRELUDE, PRELUDE_MARKER, SNAPSHOT, STATE_NAME

RESTART_NOTE = ("SandboxCrash: the REPL could not run this code ({reason}); it was restarted "
                "with a fresh state: variables from earlier blocks are gone")


@dataclass
class BlockRun:
    output: str
    error: str | None
    elapsed_s: float
    restored: list[str] = field(default_factory=list)   # reserved names the code rebound


@dataclass
class AnswerState:
    content: str | None        # the answer as text; None while it is empty
    ready: bool
    variables: list[str] = field(default_factory=list)   # "name (type, size)" of model variables
    more_variables: int = 0
    flagged_empty: bool = False   # answer["ready"] is True but the content is empty
    json: str | None = None       # the content's exact JSON when the model gave a non-str value


class Workspace:
    def __init__(self, *, context: Any, view: ContextView | None,
                 host_functions: dict[str, Callable], sandbox_opts: dict) -> None:
        self._context = context          # a str, or None when `view` is the corpus proxy
        # REPL code binding `context` to the lazy document sequence over the host proxy.
        self._context_code = CONTEXT_PRELUDE if view is not None else None
        self._view = view
        self._host_functions = dict(host_functions)
        if view is not None:
            self._host_functions[HOST_NAME] = view   # wrapped as `context` by CONTEXT_PRELUDE
        self._opts = dict(sandbox_opts)
        self._sandbox = None
        self._state: dict | None = None    # `_rlm_state` after the last block
        # The REPL starts while the root model writes its first reply: a start
        # costs tens of ms of CPU, and a batch starts hundreds at once, so
        # starting first would hold every question's first call behind them all.
        self._start_error: BaseException | None = None
        self._starting: threading.Thread | None = threading.Thread(
            target=self._start_in_background, name="rlm-repl-start", daemon=True)
        self._starting.start()

    def _start_in_background(self) -> None:
        try:
            self._start()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the first use
            self._start_error = exc

    def _ready(self) -> None:
        """Wait for the first start; a failed start is raised to every use."""
        if self._starting is not None:
            self._starting.join()
            self._starting = None
        if self._start_error is not None:
            raise self._start_error

    def _start(self) -> None:
        from sandbox import Sandbox

        self._sandbox = Sandbox(host_functions=self._host_functions, **self._opts)
        if self._view is None:
            self._sandbox.set("context", self._context)   # the sandbox restores it on restarts
        self._install_repl()

    def _install_repl(self) -> None:
        """Prelude, then the context, then the snapshot of reserved names (the
        contract's order): a str context is already bound by `sandbox.set`, a
        corpus one by CONTEXT_PRELUDE (REPL code over the host proxy)."""
        for step in (PRELUDE, self._context_code, SNAPSHOT):
            if step is None:
                continue
            result = self._sandbox.run(step)
            if result.error:
                raise RuntimeError(f"sandbox prelude failed: {result.error}")

    def _ensure_prelude(self) -> None:
        """After a crash or a hard timeout the sandbox restarts its worker with a
        fresh namespace: FINAL and `answer` must be defined again."""
        from sandbox import SandboxError

        try:
            self._sandbox.get(PRELUDE_MARKER)
        except SandboxError:
            self._install_repl()

    @property
    def sandbox(self):
        self._ready()
        return self._sandbox

    def run(self, code: str, timeout_s: float) -> BlockRun:
        from sandbox import SandboxError

        self._ready()
        started = time.perf_counter()
        if self._view is not None:   # host calls of this block end with it
            self._view.set_deadline(time.monotonic() + timeout_s)
        try:
            result = _run_with_timeout(self._sandbox, code, timeout_s)
        except SandboxError as exc:
            self._restart()
            return BlockRun("", RESTART_NOTE.format(reason=exc), time.perf_counter() - started)
        if result.error or result.timed_out:
            self._ensure_prelude()
        restored = self._after_block()
        output = result.stdout or ""
        notes = self._view.drain_notes() if self._view is not None else []
        if notes:
            output = output + ("\n" if output else "") + "\n".join(f"[note] {n}" for n in notes)
        error = result.error
        if result.timed_out:
            error = (error or "") + f"\nTimeoutError: the block ran longer than {timeout_s:.1f}s"
        return BlockRun(output, error.strip() if error else None, result.elapsed_s, restored)

    def _after_block(self) -> list[str]:
        """Put back the reserved names the block rebound; refresh `_rlm_state`."""
        from sandbox import SandboxError

        try:
            result = self._sandbox.run(AFTER_BLOCK, timeout_s=10.0)
            self._state = self._sandbox.get(STATE_NAME) if not result.error else None
        except SandboxError:
            self._state = None
        if not isinstance(self._state, dict):
            self._state = None
            return []
        return [str(n) for n in self._state.get("restored") or []]

    def _restart(self) -> None:
        try:
            self._sandbox.close()
        except Exception:  # noqa: BLE001 - the old worker is already gone
            pass
        self._state = None
        self._start()

    def answer(self) -> AnswerState:
        """The answer as of the last block (read from `_rlm_state`, which holds it as text)."""
        state = self._state
        if state is None:
            return AnswerState(None, False)
        content = state.get("content")
        content = content if isinstance(content, str) and content else None
        ready = bool(state.get("ready"))
        return AnswerState(content, ready and content is not None,
                           [str(v) for v in state.get("variables") or []],
                           int(state.get("more_variables") or 0),
                           flagged_empty=ready and content is None,
                           json=state.get("json") if isinstance(state.get("json"), str) else None)

    def reopen_answer(self) -> None:
        """The answer is not final after all (a typed value that did not fit): clear
        `ready`, keep the content, so the model's next reply must finish again."""
        from sandbox import SandboxError

        self._ready()
        try:
            self._sandbox.run('_rlm.answer["ready"] = False', timeout_s=10.0)
        except SandboxError:
            pass
        self._after_block()

    def set_variable(self, name: str, value: Any) -> str | None:
        """Bind a JSON-safe host value in the REPL (kept across worker restarts);
        returns why it could not be, or None."""
        from sandbox import SandboxError

        self._ready()
        try:
            self._sandbox.set(name, value)
        except SandboxError as exc:
            return f"could not set `{name}` in the REPL: {exc}"
        return None

    def has_variable(self, name: str) -> bool:
        return name in {v.split(" (", 1)[0] for v in self.answer().variables}

    def close(self) -> None:
        try:
            self._ready()
        except BaseException:  # noqa: BLE001 - a start that failed left nothing to close
            pass
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None


def _run_with_timeout(sandbox, code: str, timeout_s: float):
    # The wall-time budget bounds every block: per-run timeout when the
    # sandbox offers one, else its configured default.
    if "timeout_s" in inspect.signature(sandbox.run).parameters:
        return sandbox.run(code, timeout_s=timeout_s)
    sandbox.timeout_s = timeout_s   # read by each run
    return sandbox.run(code)
