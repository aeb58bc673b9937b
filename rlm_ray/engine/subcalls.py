"""The REPL functions that call models: llm_query(_batched) through the gateway,
rlm_query(_batched) through child RLMs. They run in the host (the RLM actor),
never in the sandbox, so depth, budgets and credentials stay out of the
model's reach.

Failure policy: a batched call puts "Error: ..." in the failed slot and keeps
the others; a single call raises into the REPL. A budget or deadline hit also
raises the tree's StopSignal, because the model's code may swallow the error
but the run must still end.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlm_ray.engine.limits import DEFAULT_SUB_CONTEXT_TOKENS, StopSignal
from rlm_ray.engine.records import CallRow, Recorder, new_call_id, usage_of
from rlm_ray.engine.spec import Result, RunSpec
from rlm_ray.llm.types import BudgetExceeded, Completion, LLMError

ERROR_PREFIX = "Error: "


@dataclass
class ChildJob:
    question: str
    context: Any          # the Corpus handle or a str
    spec: RunSpec         # already at depth+1, parent_call_id = the `rlm` row
    query_id: str


@dataclass
class ChildOutcome:
    result: Result | None = None
    error: str | None = None


ChildLauncher = Callable[[list[ChildJob]], list[ChildOutcome]]


def _count_tokens(text: str) -> int:
    from rlm_ray.tokens import count_tokens

    return count_tokens(text)


class SubCalls:
    def __init__(self, *, spec: RunSpec, recorder: Recorder, stop: StopSignal,
                 launcher: ChildLauncher, context: Any, query_id: str) -> None:
        self.spec = spec
        self.recorder = recorder
        self.stop = stop
        self.launcher = launcher
        self.context = context
        self.query_id = query_id
        self.current_parent: str | None = None   # the root turn whose code is running
        self.window = spec.settings.sub_window_tokens or _sub_window(spec, spec.sub_model)
        self._windows = {spec.sub_model: self.window}   # per model `model=` may pick

    def host_functions(self) -> dict[str, Callable]:
        return {"llm_query": self.llm_query, "llm_query_batched": self.llm_query_batched,
                "rlm_query": self.rlm_query, "rlm_query_batched": self.rlm_query_batched}

    # ---- which model `model=` may pick ------------------------------------------------
    def _pick(self, model: Any, allowed: tuple[str, ...], default: str, function: str) -> str:
        """`model=` as the REPL wrote it -> a configured model string. A name is
        matched whole or without its provider prefix ("gpt-5-mini" for
        "openai/gpt-5-mini"); anything else is an error, never a fallback."""
        if model is None:
            return default
        if not isinstance(model, str) or not model.strip():
            raise TypeError(f"{function}: model must be a model name (str) or None")
        wanted = model.strip()
        for name in allowed:
            if wanted in (name, name.split("/", 1)[-1]):
                return name
        raise ValueError(f"{function}: model {wanted!r} is not allowed in this run; "
                         f"allowed: {', '.join(allowed)} (or model=None for {default})")

    def _sub_models(self) -> tuple[str, ...]:
        return self.spec.allowed_models or (self.spec.sub_model,)

    def _rlm_models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.spec.model, *self._sub_models())))

    # ---- plain sub-model calls -----------------------------------------------------
    def llm_query(self, prompt: str, model: str | None = None) -> str:
        chosen = self._pick(model, self._sub_models(), self.spec.sub_model, "llm_query")
        return _raise_if_error(self._llm_many([prompt], chosen)[0])

    def llm_query_batched(self, prompts: list[str], model: str | None = None) -> list[str]:
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise TypeError("llm_query_batched expects a list of prompt strings")
        chosen = self._pick(model, self._sub_models(), self.spec.sub_model, "llm_query_batched")
        return self._llm_many(list(prompts), chosen)

    def _llm_many(self, prompts: list[Any], model: str | None = None) -> list[str]:
        model = model or self.spec.sub_model
        slots: list[str | None] = [None] * len(prompts)
        to_send: list[int] = []
        for i, prompt in enumerate(prompts):
            problem = self._refusal(prompt, self._window_of(model))
            if problem:
                slots[i] = _fail(problem)
            else:
                to_send.append(i)
        to_send = self._grant(to_send, slots)
        if to_send:
            outcomes = self._fan_out([prompts[i] for i in to_send], model)
            for i, outcome in zip(to_send, outcomes):
                slots[i] = self._settle(outcome, model)
        return [s if s is not None else _fail("not sent") for s in slots]

    def _window_of(self, model: str) -> int:
        if model not in self._windows:
            self._windows[model] = (self.spec.settings.sub_window_tokens
                                    or _sub_window(self.spec, model))
        return self._windows[model]

    def _refusal(self, prompt: Any, window: int) -> str | None:
        if not isinstance(prompt, str):
            return f"a prompt must be a str, got {type(prompt).__name__}"
        if not prompt.strip():
            return "empty prompt"
        # Bytes bound tokens from above: count exactly only when it could matter.
        if len(prompt.encode("utf-8", "replace")) > window:
            tokens = _count_tokens(prompt)
            if tokens > window:
                return (f"prompt of {tokens} tokens exceeds the sub-model's context window of "
                        f"{window} tokens; it was not sent. Split it into smaller chunks.")
        return None

    def _grant(self, wanted: list[int], slots: list[str | None]) -> list[int]:
        """Deadline and sub-call budget checks, before anything is sent."""
        if not wanted:
            return wanted
        if self.spec.budget.expired():
            self.stop.flag("timeout", "wall-time limit reached")
            for i in wanted:
                slots[i] = _fail("wall-time limit reached; sub-call not sent")
            return []
        granted = self.spec.budget.take_sub_calls(len(wanted))
        for i in wanted[granted:]:
            slots[i] = _fail("sub-call budget (max_sub_calls) exhausted; not sent")
        if granted < len(wanted):
            self.stop.flag("budget_exceeded", "max_sub_calls reached")
        return wanted[:granted]

    def _fan_out(self, prompts: list[str], model: str) -> list[Completion | BaseException]:
        from rlm_ray import llm

        kwargs = dict(config=self.spec.gateway, budget=self.spec.budget.gateway_budget,
                      temperature=self.spec.settings.temperature)
        if len(prompts) == 1:   # one call: no fan-out machinery, straight from this thread
            try:
                return [llm.complete([{"role": "user", "content": prompts[0]}],
                                     model, **kwargs)]
            except Exception as exc:   # the slot carries it; the loop goes on
                return [exc]
        requests = [{"messages": [{"role": "user", "content": p}]} for p in prompts]
        return list(llm.complete_many(requests, model=model, **kwargs))

    def _settle(self, outcome: Completion | BaseException, model: str) -> str:
        row = CallRow(self.query_id, new_call_id(), self.current_parent, self.spec.depth + 1,
                      "sub", model)
        if isinstance(outcome, Completion):
            row.prompt_tokens = outcome.prompt_tokens
            row.completion_tokens = outcome.completion_tokens
            row.cost_usd, row.latency_s = outcome.cost_usd, round(outcome.latency_s, 6)
            row.retries, row.cache_hit = outcome.retries, outcome.cache_hit
            row.take_billing(outcome)
            self.recorder.add_call(row)
            return outcome.text
        if isinstance(outcome, BudgetExceeded):
            self.stop.flag("budget_exceeded", str(outcome))
            return _fail(str(outcome))   # refused before sending: no call row
        row.status = "error"
        row.retries = getattr(outcome, "retries", 0)
        self.recorder.add_call(row)
        message = (str(outcome) if isinstance(outcome, LLMError)
                   else f"{type(outcome).__name__}: {outcome}")
        return _fail(f"sub-call failed: {message}")

    # ---- child RLMs --------------------------------------------------------------
    def rlm_query(self, prompt: str, model: str | None = None, context: Any = None) -> str:
        """The official signature (prompt, model=None) plus our context= keyword."""
        chosen = self._pick(model, self._rlm_models(), self.spec.model, "rlm_query")
        return _raise_if_error(self._rlm_many([prompt], [context], chosen)[0])

    def rlm_query_batched(self, prompts: list[str], model: str | None = None,
                          contexts: list[Any] | None = None) -> list[str]:
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise TypeError("rlm_query_batched expects a list of prompt strings")
        chosen = self._pick(model, self._rlm_models(), self.spec.model, "rlm_query_batched")
        contexts = list(contexts) if contexts is not None else [None] * len(prompts)
        if len(contexts) != len(prompts):
            raise ValueError("rlm_query_batched: prompts and contexts differ in length")
        return self._rlm_many(list(prompts), contexts, chosen)

    def _rlm_many(self, prompts: list[Any], contexts: list[Any], model: str) -> list[str]:
        if not self.spec.budget.can_spawn_child(self.spec.depth):
            # At max depth a child would go too deep: ask a sub-model directly (the
            # chosen one when it is a sub-model, else the configured sub-model).
            direct = model if model in self._sub_models() else self.spec.sub_model
            return self._llm_many([p if c is None else f"{p}\n\nContext:\n{c}"
                                   for p, c in zip(prompts, contexts)], direct)
        slots: list[str | None] = [None] * len(prompts)
        wanted = []
        for i, (prompt, context) in enumerate(zip(prompts, contexts)):
            if not isinstance(prompt, str) or not prompt.strip():
                slots[i] = _fail("rlm_query needs a non-empty str prompt")
            elif context is not None and not isinstance(context, str):
                slots[i] = _fail("rlm_query context must be a str (or None: same corpus)")
            else:
                wanted.append(i)
        wanted = self._grant(wanted, slots)
        jobs, rows = [], []
        for i in wanted:
            row = CallRow(self.query_id, new_call_id(), self.current_parent, self.spec.depth + 1,
                          "rlm", model)
            rows.append(row)
            jobs.append(ChildJob(question=prompts[i],
                                 context=self.context if contexts[i] is None else contexts[i],
                                 spec=self.spec.child(row.call_id, model),
                                 query_id=self.query_id))
        started = time.monotonic()
        outcomes = self.launcher(jobs) if jobs else []
        for i, row, outcome in zip(wanted, rows, outcomes):
            row.latency_s = round(time.monotonic() - started, 6)
            slots[i] = self._adopt_child(row, outcome)
        return [s if s is not None else _fail("not run") for s in slots]

    def _adopt_child(self, row: CallRow, outcome: ChildOutcome) -> str:
        result = outcome.result
        if result is None:
            row.status = "error"
            self.recorder.add_call(row)
            return _fail(f"child RLM failed: {outcome.error}")
        usage = usage_of(result.calls)
        row.prompt_tokens, row.completion_tokens = usage["input_tokens"], usage["output_tokens"]
        row.cost_usd, row.status = usage["cost_usd"], result.status
        row.cached_tokens, row.cache_write_tokens = usage["cached_tokens"], usage["cache_write_tokens"]
        row.cache_saved_usd = usage["cache_saved_usd"]
        row.latency_s = round(result.wall_s, 6)
        row.cache_hit = bool(usage["llm_calls"]) and usage["cache_hits"] == usage["llm_calls"]
        self.recorder.add_call(row)
        self.recorder.merge(result.calls, result.steps)
        if result.status in ("budget_exceeded", "timeout"):
            self.stop.flag(result.status, f"child RLM stopped: {result.error or result.status}")
        if result.answer is not None and result.status != "error":
            return result.answer
        return _fail(f"child RLM ended with status {result.status}: {result.error}")


class _Failure(str):
    """A slot that holds an error message (plain str once it reaches the REPL)."""


def _fail(message: str) -> _Failure:
    return _Failure(ERROR_PREFIX + message)


def _raise_if_error(slot: str) -> str:
    if isinstance(slot, _Failure):
        raise RuntimeError(slot[len(ERROR_PREFIX):])
    return slot


def _sub_window(spec: RunSpec, model: str) -> int:
    from rlm_ray.llm.cost import context_window

    return context_window(model, spec.gateway) or DEFAULT_SUB_CONTEXT_TOKENS
