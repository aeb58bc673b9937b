"""One RLM answering one question, in whatever process hosts it (an RLMActor,
or the caller with `local=True`): build the REPL, run the root loop, package
a Result. Never raises for a model or code failure: those are statuses."""
from __future__ import annotations

import hashlib
import time
import traceback
from typing import Any

from rlm_ray.engine import output_schema, prompts
from rlm_ray.engine.limits import DEFAULT_SUB_CONTEXT_TOKENS, StopSignal
from rlm_ray.engine.loop import Outcome, RootLoop
from rlm_ray.engine.records import Recorder, redact, secret_values, usage_of
from rlm_ray.engine.context_view import ContextView
from rlm_ray.engine.spec import Result, RunSpec
from rlm_ray.engine.subcalls import ChildLauncher, SubCalls
from rlm_ray.engine.workspace import Workspace
from rlm_ray.errors import UserError
from rlm_ray.text_context import load_text_context


def describe(context: Any, spec: RunSpec) -> tuple[str, str, ContextView | None]:
    """(kind, metadata block, corpus proxy or None) for the input."""
    if isinstance(context, str):
        from rlm_ray.tokens import tokens_about

        return "str", prompts.str_metadata(context, *tokens_about(context)), None
    # A scope is resolved here, once per question (an empty one is this row's error);
    # every call of the view then runs on the scope's own database.
    remaining = spec.budget.remaining_s()
    view = ContextView(context, max_rows=spec.settings.max_rows,
                       max_read_chars=spec.settings.max_read_chars, scope=spec.scope,
                       deadline=None if remaining is None else time.monotonic() + remaining)
    # Through a query worker, not corpus.docs() here: that would hold every
    # document row in this host, memory that grows with the corpus.
    paths = view.example_paths(prompts.MAX_EXAMPLE_PATHS)
    return "corpus", prompts.corpus_metadata(view.metadata_stats(), paths), view


def answer_question(context: Any, question: str, query_id: str, spec: RunSpec,
                    launcher: ChildLauncher) -> Result:
    started = time.time()
    recorder = Recorder(query_id, secret_values((spec.gateway.api_key,)))
    stop = StopSignal()
    workspace = None
    try:
        # A batch row's own text is read here, on the host, bounded (a UserError: the row's error).
        context = load_text_context(context)
        kind, metadata, view = describe(context, spec)
        subcalls = SubCalls(spec=spec, recorder=recorder, stop=stop, launcher=launcher,
                            context=context, query_id=query_id)
        settings = prompts.PromptSettings(
            sub_window_tokens=subcalls.window or DEFAULT_SUB_CONTEXT_TOKENS,
            view_chars=spec.settings.view_chars, max_iterations=spec.budget.max_iterations,
            max_rows=spec.settings.max_rows, turn_view_chars=spec.settings.turn_view_chars,
            allowed_models=spec.allowed_models or (spec.sub_model,))
        opts = {"timeout_s": spec.settings.sandbox_timeout_s, **spec.sandbox_opts}
        workspace = Workspace(context=context if kind == "str" else None, view=view,
                              host_functions=subcalls.host_functions(), sandbox_opts=opts)
        system = prompts.system_prompt(kind, settings, spec.system_prompt)
        if spec.output_schema is not None:   # text answers keep the prompt unchanged
            system += output_schema.prompt_section(spec.output_schema,
                                                   spec.settings.output_retries)
        loop = RootLoop(spec=spec, query_id=query_id, system=system,
                        first_user=prompts.first_user_message(question, metadata),
                        workspace=workspace, recorder=recorder, stop=stop,
                        call_model=_root_caller(spec),
                        on_turn=lambda call_id: setattr(subcalls, "current_parent", call_id))
        outcome = loop.run()
    except UserError as exc:
        outcome = Outcome(None, "error", str(exc), 0)
    except Exception as exc:  # noqa: BLE001 - an engine fault fails this question, not the batch
        outcome = Outcome(None, "error", f"{type(exc).__name__}: {exc}", 0)
        traceback.print_exc()
    finally:
        if workspace is not None:
            workspace.close()
    result = package(outcome, recorder, spec, time.time() - started)
    if isinstance(context, str) and spec.depth == 0:
        result.context_chars = len(context)
        result.context_sha256 = hashlib.sha256(context.encode("utf-8", "surrogatepass")).hexdigest()
    return result


def package(outcome: Outcome, recorder: Recorder, spec: RunSpec, wall_s: float) -> Result:
    calls, steps = recorder.call_dicts(), recorder.step_dicts()
    usage = usage_of(calls)
    depths = [c["depth"] for c in calls]
    return Result(
        answer=outcome.answer, status=outcome.status,
        error=redact(outcome.error, recorder.secrets), iterations=outcome.iterations,
        max_depth_reached=max(depths) if depths else spec.depth, usage=usage,
        cost_usd=usage["cost_usd"], wall_s=round(wall_s, 4), calls=calls, steps=steps,
        model=spec.model, output=outcome.output)


def _root_caller(spec: RunSpec):
    def call(messages: list[dict]):
        from rlm_ray import llm

        return llm.complete(messages, spec.model, config=spec.gateway,
                            budget=spec.budget.gateway_budget,
                            temperature=spec.settings.temperature,
                            prompt_cache=spec.gateway.prompt_cache)
    return call
