"""The batch's pool of RLM actors: one question at a time per actor, actors
reserve no CPU (their work is waiting on models and the sandbox), and a
broken actor is replaced rather than restarted in place, so a retried
question always starts on a clean REPL."""
from __future__ import annotations

from typing import Any

from rlm_ray.batch.queries import Query


class ActorPool:
    def __init__(self, size: int) -> None:
        from rlm_ray._ray import ensure_ray

        ensure_ray()
        self._idle: list[Any] = [self._new_actor() for _ in range(size)]
        self._busy: set[Any] = set()
        self._trees: dict[Any, Any] = {}

    @staticmethod
    def _new_actor() -> Any:
        from rlm_ray.engine.actor import RLMActor

        return RLMActor.options(num_cpus=0).remote()

    def has_idle(self) -> bool:
        return bool(self._idle)

    def acquire(self) -> Any:
        actor = self._idle.pop()
        self._busy.add(actor)
        return actor

    def release(self, actor: Any) -> None:
        self._close_tree(actor)
        self._busy.discard(actor)
        self._idle.append(actor)

    def submit(self, actor: Any, corpus: Any, query: Query, settings: dict) -> Any:
        """Start one question; its tree budget (and so its deadline) opens now,
        not when it was queued."""
        from rlm_ray.engine import RLM
        from rlm_ray.engine.limits import TreeBudget
        from rlm_ray.engine.spec import RunSpec

        rlm = RLM(**settings)   # validates the settings the same way `rlm-ray query` does
        tree = TreeBudget.open(rlm.limits)
        spec = RunSpec(model=rlm.model, sub_model=rlm.sub_model, gateway=rlm.gateway,
                       budget=tree, settings=rlm.settings, sandbox_opts=rlm.sandbox_opts,
                       allowed_models=rlm.allowed_models, system_prompt=rlm.system_prompt)
        self._trees[actor] = tree
        return actor.answer.remote(corpus, query.question, query.query_id, spec)

    def _close_tree(self, actor: Any) -> None:
        tree = self._trees.pop(actor, None)
        if tree is not None:
            tree.close()

    def replace(self, actor: Any) -> None:
        """Kill a failed or stuck actor and put a fresh one in its place."""
        import ray

        self._close_tree(actor)
        self._busy.discard(actor)
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001  (already dead: nothing to kill)
            pass
        self._idle.append(self._new_actor())

    @staticmethod
    def describe_error(exc: BaseException) -> str:
        """One line for the dead-letter row: the cause, not a Ray traceback."""
        import ray.exceptions as rex

        if isinstance(exc, rex.RayTaskError):
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            text = f"{type(cause).__name__}: {cause}"
        elif isinstance(exc, rex.ActorDiedError | rex.ActorUnavailableError):
            text = "the RLM actor died (process or node lost)"
        else:
            text = f"{type(exc).__name__}: {exc}"
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return first[:500]

    def shutdown(self) -> None:
        import ray

        for actor in [*self._idle, *self._busy]:
            self._close_tree(actor)
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        self._idle, self._busy = [], set()
