"""The RLM's REPL: one `sandbox.Sandbox` with the engine's host functions and
prelude, plus crash recovery. A crashed worker (killed, out of memory) becomes
an error the model reads and a fresh REPL, not a failed question."""
from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlm_ray.engine.context_view import ContextView
from rlm_ray.engine.repl_prelude import PRELUDE, PRELUDE_MARKER

RESTART_NOTE = ("SandboxCrash: the REPL could not run this code ({reason}); it was restarted "
                "with a fresh state: variables from earlier blocks are gone")


@dataclass
class BlockRun:
    output: str
    error: str | None
    elapsed_s: float


@dataclass
class AnswerState:
    content: str | None
    ready: bool


class Workspace:
    def __init__(self, *, context: Any, view: ContextView | None,
                 host_functions: dict[str, Callable], sandbox_opts: dict) -> None:
        self._context = context          # a str, or None when `view` is the corpus proxy
        self._view = view
        self._host_functions = dict(host_functions)
        if view is not None:
            self._host_functions["context"] = view
        self._opts = dict(sandbox_opts)
        self._sandbox = None
        self._start()

    def _start(self) -> None:
        from sandbox import Sandbox

        self._sandbox = Sandbox(host_functions=self._host_functions, **self._opts)
        self._install_prelude()
        if self._view is None:
            self._sandbox.set("context", self._context)   # the sandbox restores it on restarts

    def _install_prelude(self) -> None:
        prelude = self._sandbox.run(PRELUDE)
        if prelude.error:
            raise RuntimeError(f"sandbox prelude failed: {prelude.error}")

    def _ensure_prelude(self) -> None:
        """After a crash or a hard timeout the sandbox restarts its worker with a
        fresh namespace: FINAL and `answer` must be defined again."""
        from sandbox import SandboxError

        try:
            self._sandbox.get(PRELUDE_MARKER)
        except SandboxError:
            self._install_prelude()

    @property
    def sandbox(self):
        return self._sandbox

    def run(self, code: str, timeout_s: float) -> BlockRun:
        from sandbox import SandboxError

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
        output = result.stdout or ""
        notes = self._view.drain_notes() if self._view is not None else []
        if notes:
            output = output + ("\n" if output else "") + "\n".join(f"[note] {n}" for n in notes)
        error = result.error
        if result.timed_out:
            error = (error or "") + f"\nTimeoutError: the block ran longer than {timeout_s:.1f}s"
        return BlockRun(output, error.strip() if error else None, result.elapsed_s)

    def _restart(self) -> None:
        try:
            self._sandbox.close()
        except Exception:  # noqa: BLE001 - the old worker is already gone
            pass
        self._start()

    def answer(self) -> AnswerState:
        try:
            state = self._sandbox.get("answer")
        except Exception:  # noqa: BLE001 - a dead or rebound REPL simply has no answer
            return AnswerState(None, False)
        if not isinstance(state, dict):
            return AnswerState(None, False)
        content = state.get("content")
        if content is not None and not isinstance(content, str):
            content = str(content)
        return AnswerState(content, bool(state.get("ready")) and content is not None)

    def variable_text(self, name: str) -> str | None:
        try:
            value = self._sandbox.get(name)
        except Exception:  # noqa: BLE001
            return None
        return None if value is None else (value if isinstance(value, str) else str(value))

    def close(self) -> None:
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
