"""The root loop of one RLM, independent of Ray: ask the root model, run its
```repl``` blocks in the sandbox, feed back a truncated view, until FINAL or a
limit. Every way out returns an Outcome (never raises, never hangs): limits
end with the best partial answer the REPL holds, or one forced answer turn.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlm_ray.engine import compaction, output_schema, parsing, prompts
from rlm_ray.engine.feedback import BlockOutput, TurnFeedback, render
from rlm_ray.engine.limits import StopSignal
from rlm_ray.engine.records import CallRow, Recorder, new_call_id, redact
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
    output: Any = None     # typed answers: the value that fit the output schema


class _Stop(Exception):
    def __init__(self, status: str, error: str | None) -> None:
        super().__init__(error or status)
        self.status, self.error = status, error


def _billed(row: CallRow, completion: Completion) -> CallRow:
    row.prompt_tokens = completion.prompt_tokens
    row.completion_tokens = completion.completion_tokens
    row.cost_usd, row.latency_s = completion.cost_usd, round(completion.latency_s, 6)
    row.retries, row.cache_hit = completion.retries, completion.cache_hit
    row.take_billing(completion)
    return row


class _Overflow(Exception):
    """A root call the provider refused as longer than its window."""

    def __init__(self, messages: list[dict], reason: str) -> None:
        super().__init__(reason)
        self.reason = f"root model call failed: context_length_exceeded: {reason}"
        tokens = compaction.conversation_tokens(messages)
        # The window the provider names, else a guess safely below what it refused.
        self.window = compaction.window_from_error(reason) or int(tokens * 0.75)


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
        settings = spec.settings
        self.compaction_on = settings.root_window_tokens != 0
        self.window = compaction.root_window(settings, spec.model, spec.gateway)
        self.archive: list[dict] = []    # real turns compacted so far (for `history`)
        self.output: Any = None               # the accepted typed value
        self.rejections = 0                   # typed answers refused so far
        self.rejected_answer: str | None = None

    # ---- the loop ---------------------------------------------------------------
    def run(self) -> Outcome:
        try:
            outcome = self._iterate()
        except _Stop as stop:
            outcome = self._partial(stop.status, stop.error)
        outcome.output = self.output
        return outcome

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
        """One root model call, recorded as a `root` row; limits become _Stop. The
        conversation is compacted first when it nears the window, and once more
        (then the call is retried once) when the provider says it is too long."""
        self._compact_if_needed(messages)
        try:
            return self._root_call(messages)
        except _Overflow as overflow:
            # What the provider accepts is the truth: later turns compact against it.
            self.window = min(w for w in (self.window, overflow.window) if w)
            if not self._compact(messages, self.window, "the provider refused the "
                                 "conversation as too long (context_length_exceeded)"):
                raise _Stop("error", overflow.reason) from None
        try:
            return self._root_call(messages)
        except _Overflow as again:
            raise _Stop("error", again.reason) from None

    def _paid_call(self, kind: str, messages: list[dict]) -> tuple[CallRow, Completion]:
        """One root-model call recorded as a `kind` row: billed when answered, an
        error row (then the LLMError) when not; out of budget ends the question."""
        row = CallRow(self.query_id, new_call_id(), self.spec.parent_call_id, self.spec.depth,
                      kind, self.spec.model)
        try:
            completion = self.call_model(messages)
        except BudgetExceeded as exc:
            raise _Stop("budget_exceeded", str(exc)) from None
        except LLMError as exc:
            row.status, row.retries = "error", exc.retries
            self.recorder.add_call(row)
            raise
        self.recorder.add_call(_billed(row, completion))
        return row, completion

    def _root_call(self, messages: list[dict]) -> tuple[str, str]:
        try:
            row, completion = self._paid_call("root", messages)
        except LLMError as exc:
            reason = redact(str(exc), self.recorder.secrets)
            if exc.kind == "context_length" and self.compaction_on:
                raise _Overflow(messages, reason) from None
            if exc.kind == "context_length":
                reason = f"context_length_exceeded: {reason}"
            raise _Stop("error", f"root model call failed: {reason}") from None
        return row.call_id, completion.text

    # ---- compaction (engine/compaction.py) ------------------------------------------
    def _compact_if_needed(self, messages: list[dict]) -> None:
        if self.window is None:
            return
        limit = int(self.window * self.spec.settings.compact_fraction)
        if compaction.conversation_tokens(messages) > limit:
            self._compact(messages, self.window, "the conversation passed "
                          f"{self.spec.settings.compact_fraction:.0%} of the {self.window}-token "
                          "window")

    def _compact(self, messages: list[dict], window: int, why: str) -> bool:
        """Replace older turns by the root model's own summary, in place; put the
        full history into the REPL as `history`. False when nothing could be done."""
        limit = int(window * self.spec.settings.compact_fraction)
        step = compaction.plan(messages, limit)
        if step is None:
            return False
        before = compaction.conversation_tokens(messages)
        summary = self._summarise(messages, step, window, limit)
        if summary is None:
            return False
        call_id, text, cut = summary
        earlier = compaction.compacted_replies(messages)
        self.archive += step.older[2:] if earlier else step.older
        history = [*messages[:compaction.PREFIX_MESSAGES], *self.archive, *step.kept]
        stored = self.workspace.set_variable(compaction.HISTORY_NAME, history)
        messages[:] = compaction.compacted(messages, step, text)
        after = compaction.conversation_tokens(messages)
        shown = " (from a shortened view)" if cut else ""
        self.recorder.add_step(
            call_id, self.iterations,
            f"# context compacted: {why}; replies 1 to {step.replies} summarised{shown}, "
            f"{before} -> {after} tokens; `{compaction.HISTORY_NAME}` holds {len(history)} "
            "messages", text, stored, 0.0)
        return True

    def _summarise(self, messages: list[dict], step: compaction.Plan, window: int,
                   limit: int) -> tuple[str, str, bool] | None:
        """The summary call (a `compact` row: costed, not an iteration); a view
        too long even shortened is tried once more at half the limit."""
        for attempt_limit in (limit, limit // 2):
            request, cut = compaction.summary_request(messages, step, window, attempt_limit)
            try:
                row, completion = self._paid_call("compact", request)
            except LLMError as exc:
                if exc.kind == "context_length":
                    continue
                return None
            text = redact(completion.text, self.recorder.secrets) or ""
            return (row.call_id, text, cut) if text.strip() else None
        return None

    def _act(self, call_id: str, reply: str, forced: bool = False) -> str | None:
        """Run the reply's code, then look for its FINAL; returns the answer once
        there is one, else appends the feedback turn (not after a forced turn)."""
        code = parsing.code_blocks(reply)
        turn = TurnFeedback(self.iterations)
        if code.fence == parsing.PYTHON:
            turn.notes.append("your reply had no ```repl``` block, so its ```python block(s) "
                              "were run; write code in ```repl``` blocks")
        failed = self._run_blocks(call_id, code.blocks, turn) if code.blocks else False
        state = self.workspace.answer()
        final = None
        if state.ready:
            misfit = self._typed_misfit(state.content, forced)
            if misfit is None:
                return state.content
            turn.notes.append(misfit)   # no FINAL line after it: one check per reply
            state = self.workspace.answer()
        else:
            final = parsing.find_final(code.rest, has_code=bool(code.blocks))
        if final is not None:
            printed = "\n".join(b.output for b in turn.blocks)
            answer, refusal = self._text_final(call_id, final, code.blocks, printed, failed,
                                               forced)
            misfit = None if answer is None else self._typed_misfit(answer, forced)
            if answer is not None and misfit is None:
                return answer
            turn.notes.append(refusal or misfit)
            state = self.workspace.answer()
        elif not code.blocks:
            turn.notes.append("your reply had no ```repl``` block: write code in ```repl``` "
                              "blocks and finish with FINAL(...) or FINAL_VAR(...)")
        if state.flagged_empty:
            turn.notes.append('answer["ready"] is True but answer["content"] is empty, so the '
                              "run goes on: put the answer in answer[\"content\"]")
        if not forced:
            turn.variables, turn.more_variables = state.variables, state.more_variables
            self._feedback(turn)
        return None

    def _run_blocks(self, call_id: str, blocks: list[str], turn: TurnFeedback) -> bool:
        """Runs blocks in order until one raises (True) or the answer is set."""
        self.on_turn(call_id)
        restored: list[str] = []
        for index, code in enumerate(blocks):
            run = self.workspace.run(code, self._block_timeout())
            self.recorder.add_step(call_id, self.iterations, code, run.output, run.error,
                                   run.elapsed_s)
            turn.blocks.append(BlockOutput(run.output, run.error))
            restored += [n for n in run.restored if n not in restored]
            if run.error:
                turn.skipped = len(blocks) - index - 1
                break
            if self.workspace.answer().ready or self.stop.reason:
                break
        if restored:
            names = ", ".join(f"`{n}`" for n in restored)
            turn.notes.append(f"{names} reserved by the REPL: restored after your code rebound "
                              "it; use other names for your own variables")
        return bool(turn.blocks and turn.blocks[-1].error)

    def _block_timeout(self) -> float:
        left = self.spec.budget.remaining_s()
        configured = self.spec.settings.sandbox_timeout_s
        return configured if left is None else max(0.5, min(configured, left))

    def _feedback(self, turn: TurnFeedback) -> None:
        settings = self.spec.settings
        text = render(turn, settings.view_chars, settings.turn_view_chars)
        self.messages.append({"role": "user", "content": redact(text, self.recorder.secrets)})

    def _text_final(self, call_id: str, final: parsing.Final, blocks: list[str], printed: str,
                    failed: bool, forced: bool) -> tuple[str | None, str]:
        """A FINAL / FINAL_VAR written outside the code that ran: (answer, "") or
        (None, why it was not accepted). See docs/architecture.md for the rules."""
        shown = f"FINAL_VAR({final.arg})" if final.kind == "var" else f"FINAL({final.arg[:80]})"
        if failed and not forced:
            return None, (f"{shown} was not accepted: your code raised an error, so its "
                          "result may be missing or stale; fix it, then finish")
        if final.kind == "value":
            # The text as written, as the official parser reads it: FINAL(name) of a
            # REPL variable answers the name (FINAL_VAR(name) answers its value).
            literal = parsing.literal_text(final.arg)
            if blocks and not forced and self._is_variable(final):
                # Beside code it cannot have seen run, the name of a variable is
                # meant as its value, even when the output happens to print the name.
                name = final.arg.strip()
                return None, (f"{shown} was not accepted: {name} is a REPL variable, and "
                              f"FINAL(...) answers the text as written ('{name}'). Reply "
                              f"FINAL_VAR({name}) for its value, or FINAL(...) alone with the "
                              "answer text")
            # Next to code, a literal was written before its output was seen: it
            # stands only if that output shows it (else it is a guess).
            if blocks and not forced and (not literal.strip() or literal.strip() not in printed):
                return None, (f"{shown} was not accepted: it was written in the same reply as "
                              "code, before you saw that code's output, and the output does not "
                              "show it. Read the output, then reply with FINAL(...) alone, or "
                              "FINAL_VAR(name) of a variable your code set")
            return literal, ""
        source = parsing.variable_source(final.arg)
        self.on_turn(call_id)
        run = self.workspace.run(source, self._block_timeout())
        self.recorder.add_step(call_id, self.iterations, source, run.output, run.error,
                               run.elapsed_s)
        state = self.workspace.answer()
        if state.ready:
            return state.content, ""
        problem = (run.error or "it produced no answer").strip().splitlines()[-1]
        return None, f"{shown} was not accepted: {problem}"

    def _typed_misfit(self, answer: str, forced: bool) -> str | None:
        """With an output schema: None when `answer` fits (its value kept), else the
        validator's messages for the model, the reply counting as a try. Past the
        allowed tries the run ends `invalid_output` with the raw answer kept."""
        schema = self.spec.output_schema
        if schema is None:
            return None
        state = self.workspace.answer()   # the REPL value's own JSON, when it is this answer
        value, errors = schema.accept(answer, state.json if state.content == answer else None)
        if not errors:
            self.output = value
            return None
        if forced:          # the last reply: its answer stands as text, untyped
            return None
        self.rejected_answer = answer
        self.rejections += 1
        self.workspace.reopen_answer()   # else the same value would finish the next reply
        left = self.spec.settings.output_retries - self.rejections + 1
        if left <= 0:
            raise _Stop("invalid_output", f"the answer did not match the output schema after "
                        f"{self.rejections} tries: " + "; ".join(errors[:5]))
        return output_schema.rejection_note(errors, left)

    def _is_variable(self, final: parsing.Final) -> bool:
        """FINAL(name) names a variable the REPL holds."""
        return parsing.is_name(final.arg) and self.workspace.has_variable(final.arg.strip())

    # ---- partial answers ----------------------------------------------------------
    def _partial(self, status: str, error: str | None) -> Outcome:
        if status == "invalid_output":    # the raw answer that never fit is kept
            return Outcome(self.rejected_answer, status, error, self.iterations)
        partial = self.workspace.answer().content
        # One forced turn when nothing was set and there is still room for a model call.
        if partial is None and status in ("max_iterations", "budget_exceeded") \
                and not self.spec.budget.expired():
            partial = self._forced_answer(error or status)
        if partial is not None and self.spec.output_schema is not None and self.output is None:
            value, errors = self.spec.output_schema.accept(partial)
            self.output = None if errors else value   # a partial answer that fits is typed
        return Outcome(partial, status, error, self.iterations)

    def _forced_answer(self, reason: str) -> str | None:
        """One last reply: its code runs, then its FINAL (any form, even a literal
        FINAL next to code: there is no later turn to check it), else its text."""
        self.messages.append({"role": "user", "content": prompts.forced_final(reason)})
        try:
            call_id, reply = self._turn(self.messages)
        except _Stop:
            return None
        self.messages.append({"role": "assistant", "content": reply})
        answer = self._act(call_id, reply, forced=True)
        if answer is not None:
            return answer
        partial = self.workspace.answer().content
        if partial is not None:
            return partial
        return None if parsing.code_blocks(reply).blocks else (reply.strip() or None)
