"""The root loop of one RLM, independent of Ray: ask the root model, run its
```repl``` blocks in the sandbox, feed back a truncated view, until FINAL or a
limit. Every way out returns an Outcome (never raises, never hangs): limits
end with the best partial answer the REPL holds, or one forced answer turn.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rlm_ray.engine import parsing, prompts
from rlm_ray.engine.limits import StopSignal
from rlm_ray.engine.records import CallRow, Recorder, new_call_id, redact, truncate
from rlm_ray.engine.spec import RunSpec
from rlm_ray.engine.workspace import Workspace
from rlm_ray.llm.types import BudgetExceeded, Completion, LLMError

ModelCall = Callable[[list[dict]], Completion]


@dataclass
class Outcome:
    answer: str | None
    status: str
    error: str | None
    iterations: int


class _Stop(Exception):
    def __init__(self, status: str, error: str | None) -> None:
        super().__init__(error or status)
        self.status, self.error = status, error


class RootLoop:
    def __init__(self, *, spec: RunSpec, query_id: str, system: str, first_user: str,
                 workspace: Workspace, recorder: Recorder, stop: StopSignal,
                 call_model: ModelCall, on_turn: Callable[[str], None]) -> None:
        self.spec = spec
        self.query_id = query_id
        self.workspace = workspace
        self.recorder = recorder
        self.stop = stop
        self.call_model = call_model
        self.on_turn = on_turn           # tells the host functions which turn is running
        self.messages = [{"role": "system", "content": system},
                         {"role": "user", "content": first_user}]
        self.iterations = 0

    # ---- the loop ---------------------------------------------------------------
    def run(self) -> Outcome:
        try:
            return self._iterate()
        except _Stop as stop:
            return self._partial(stop.status, stop.error)

    def _iterate(self) -> Outcome:
        budget = self.spec.budget
        while self.iterations < budget.max_iterations:
            self._check_limits()
            self.iterations += 1
            call_id, reply = self._turn(self.messages)
            self.messages.append({"role": "assistant", "content": reply})
            done = self._act(call_id, reply)
            if done is not None:
                return Outcome(done, "ok", None, self.iterations)
            self._check_limits()
        raise _Stop("max_iterations", f"no FINAL after {budget.max_iterations} iterations")

    def _check_limits(self) -> None:
        if self.stop.reason:
            raise _Stop(self.stop.reason, self.stop.detail)
        if self.spec.budget.expired():
            raise _Stop("timeout", "wall-time limit reached")

    def _turn(self, messages: list[dict]) -> tuple[str, str]:
        """One root model call, recorded as a `root` row; limits become _Stop."""
        row = CallRow(self.query_id, new_call_id(), self.spec.parent_call_id, self.spec.depth,
                      "root", self.spec.model)
        try:
            completion = self.call_model(messages)
        except BudgetExceeded as exc:
            raise _Stop("budget_exceeded", str(exc)) from None
        except LLMError as exc:
            row.status, row.retries = "error", exc.retries
            self.recorder.add_call(row)
            reason = redact(str(exc), self.recorder.secrets)
            raise _Stop("error", f"root model call failed: {reason}") from None
        row.prompt_tokens = completion.prompt_tokens
        row.completion_tokens = completion.completion_tokens
        row.cost_usd, row.latency_s = completion.cost_usd, round(completion.latency_s, 6)
        row.retries, row.cache_hit = completion.retries, completion.cache_hit
        row.take_billing(completion)
        self.recorder.add_call(row)
        return row.call_id, completion.text

    def _act(self, call_id: str, reply: str) -> str | None:
        """Run the reply's code; returns the answer once the code gave one."""
        blocks = parsing.repl_blocks(reply)
        if not blocks:
            final = parsing.text_final(reply)
            if final is not None:
                answer = self._text_final(final)
                if answer is not None:
                    return answer
            self._feedback("(your reply had no ```repl``` block: write code in ```repl``` blocks "
                           "and finish with FINAL(...) or FINAL_VAR(...))", None)
            return None
        outputs, error = self._run_blocks(call_id, blocks)
        answer = self.workspace.answer()
        if answer.ready:
            return answer.content
        self._feedback("\n".join(o for o in outputs if o), error)
        return None

    def _run_blocks(self, call_id: str, blocks: list[str]) -> tuple[list[str], str | None]:
        self.on_turn(call_id)
        outputs: list[str] = []
        for index, code in enumerate(blocks):
            run = self.workspace.run(code, self._block_timeout())
            self.recorder.add_step(call_id, self.iterations, code, run.output, run.error,
                                   run.elapsed_s)
            outputs.append(run.output)
            if run.error:
                skipped = len(blocks) - index - 1
                suffix = f"\n({skipped} later block(s) of this reply not run)" if skipped else ""
                return outputs, run.error + suffix
            if self.workspace.answer().ready or self.stop.reason:
                break
        return outputs, None

    def _block_timeout(self) -> float:
        left = self.spec.budget.remaining_s()
        configured = self.spec.settings.sandbox_timeout_s
        return configured if left is None else max(0.5, min(configured, left))

    def _feedback(self, output: str, error: str | None) -> None:
        view = truncate(output, self.spec.settings.view_chars)
        if error:
            error = truncate(error, self.spec.settings.view_chars // 2)
        text = prompts.repl_feedback(self.iterations, view, error)
        self.messages.append({"role": "user", "content": redact(text, self.recorder.secrets)})

    def _text_final(self, final: tuple[str, str]) -> str | None:
        kind, value = final
        if kind == "value":
            return value
        return self.workspace.variable_text(value)

    # ---- partial answers ----------------------------------------------------------
    def _partial(self, status: str, error: str | None) -> Outcome:
        partial = self.workspace.answer().content
        # One forced turn when nothing was set and there is still room for a model call.
        if partial is None and status in ("max_iterations", "budget_exceeded") \
                and not self.spec.budget.expired():
            partial = self._forced_answer(error or status)
        return Outcome(partial, status, error, self.iterations)

    def _forced_answer(self, reason: str) -> str | None:
        messages = self.messages + [{"role": "user", "content": prompts.forced_final(reason)}]
        try:
            call_id, reply = self._turn(messages)
        except _Stop:
            return None
        blocks = parsing.repl_blocks(reply)
        if blocks:
            self._run_blocks(call_id, blocks)
            answer = self.workspace.answer()
            return answer.content if answer.ready else None
        final = parsing.text_final(reply)
        if final is not None:
            return self._text_final(final)
        return reply.strip() or None
