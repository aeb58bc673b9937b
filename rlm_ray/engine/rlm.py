"""`RLM`: the user-facing entry point. `RLM(model, ...).answer(corpus_or_text, question)`
runs the question in an RLMActor on Ray (or in this process with `local=True`)
and always returns a Result: a dead actor or a stuck run is a status, not an
exception."""
from __future__ import annotations

import concurrent.futures
import time
import uuid
from dataclasses import replace
from typing import Any

from rlm_ray.engine.limits import Limits, TreeBudget
from rlm_ray.engine.output_schema import OutputSchema
from rlm_ray.engine.output_schema import parse as parse_schema
from rlm_ray.engine.records import usage_of
from rlm_ray.engine.spec import EngineSettings, Result, RunSpec
from rlm_ray.engine.subcalls import ChildJob, ChildOutcome
from rlm_ray.errors import UserError
from rlm_ray.llm.config import GatewayConfig


class RLM:
    def __init__(self, model: str, sub_model: str | None = None, *, api_base: str | None = None,
                 max_depth: int = 1, max_iterations: int = 20, max_sub_calls: int | None = None,
                 budget_usd: float | None = None, budget_tokens: int | None = None,
                 timeout_s: float | None = None, gateway: GatewayConfig | None = None,
                 sandbox_opts: dict | None = None, settings: EngineSettings | None = None,
                 local: bool = False, allowed_models: list[str] | tuple[str, ...] | None = None,
                 system_prompt: str | None = None, root_window: int | None = None,
                 output_schema: "dict | str | OutputSchema | None" = None) -> None:
        if not model:
            raise UserError("a model is required (e.g. --model sim)")
        self.model = model
        self.sub_model = sub_model or model
        self.limits = Limits(max_depth=max_depth, max_iterations=max_iterations,
                             max_sub_calls=max_sub_calls, budget_usd=budget_usd,
                             budget_tokens=budget_tokens, timeout_s=timeout_s)
        gateway = gateway or GatewayConfig()
        self.gateway = replace(gateway, api_base=api_base) if api_base else gateway
        self.sandbox_opts = dict(sandbox_opts or {})
        self.settings = settings or EngineSettings()
        if root_window is not None:
            # The root model's input window for compaction; 0 turns compaction off.
            if isinstance(root_window, bool) or not isinstance(root_window, int) \
                    or root_window < 0:
                raise UserError(f"the root window must be a token count >= 0 (0 turns "
                                f"compaction off), got {root_window!r}")
            self.settings = replace(self.settings, root_window_tokens=root_window)
        self.local = local
        # `model=` in llm_query & co. may pick these; the sub-model always, never a fallback.
        self.allowed_models = tuple(dict.fromkeys((self.sub_model, *(allowed_models or ()))))
        if system_prompt is not None and not system_prompt.strip():
            raise UserError("the system prompt is empty")
        self.system_prompt = system_prompt   # a template: see prompts.PLACEHOLDERS
        # Typed answers: a JSON Schema (dict or JSON text), checked now, not mid-batch.
        if output_schema is None or isinstance(output_schema, OutputSchema):
            self.output_schema = output_schema
        else:
            self.output_schema = parse_schema(output_schema)

    def answer(self, corpus_or_text: Any, question: str, query_id: str | None = None) -> Result:
        if not isinstance(question, str) or not question.strip():
            raise UserError("the question is empty")
        query_id = query_id or uuid.uuid4().hex[:12]
        if not self.local:
            from rlm_ray._ray import ensure_ray

            ensure_ray()   # before the Budget: it must live in the cluster's budget bank
        spec = self.plan()
        tree = spec.budget
        started = time.time()
        try:
            if self.local:
                from rlm_ray.engine.run import answer_question

                return answer_question(corpus_or_text, question, query_id, spec, launch_in_threads)
            return self._on_actor(corpus_or_text, question, query_id, spec, started)
        finally:
            tree.close()

    def plan(self) -> RunSpec:
        """The RunSpec of one question (opens its tree budget: call once per question)."""
        return RunSpec(model=self.model, sub_model=self.sub_model, gateway=self.gateway,
                       budget=TreeBudget.open(self.limits), settings=self.settings,
                       sandbox_opts=self.sandbox_opts, allowed_models=self.allowed_models,
                       system_prompt=self.system_prompt, output_schema=self.output_schema)

    def _on_actor(self, context: Any, question: str, query_id: str, spec: RunSpec,
                  started: float) -> Result:
        import ray

        from rlm_ray.engine.actor import DRIVER_POOL, ROOT_NAME_PREFIX, wait_timeout

        reuse = spec.settings.reuse_actors
        actor, _ = DRIVER_POOL.acquire(ROOT_NAME_PREFIX, query_id, reuse)
        healthy = False
        try:
            result = ray.get(actor.answer.remote(context, question, query_id, spec),
                             timeout=wait_timeout(spec))
            healthy = reuse
            return result
        except ray.exceptions.GetTimeoutError:
            return failed(spec, "timeout", "the RLM actor did not finish within the wall-time "
                          "limit (plus grace); its work is lost", started)
        except ray.exceptions.RayActorError as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "no detail"
            return failed(spec, "error", f"the RLM actor died: {first}", started)
        finally:
            DRIVER_POOL.release(actor, healthy)


def failed(spec: RunSpec, status: str, error: str, started: float) -> Result:
    return Result(answer=None, status=status, error=error, iterations=0,
                  max_depth_reached=spec.depth, usage=usage_of([]), cost_usd=0.0,
                  wall_s=round(time.time() - started, 4), calls=[], steps=[], model=spec.model)


def launch_in_threads(jobs: list[ChildJob]) -> list[ChildOutcome]:
    """Child RLMs in this process (local mode): same code path, threads instead of actors."""
    from rlm_ray.engine.run import answer_question

    def one(job: ChildJob) -> ChildOutcome:
        try:
            return ChildOutcome(result=answer_question(job.context, job.question, job.query_id,
                                                       job.spec, launch_in_threads))
        except Exception as exc:  # noqa: BLE001
            return ChildOutcome(error=f"{type(exc).__name__}: {exc}")

    if not jobs:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
        return list(pool.map(one, jobs))
