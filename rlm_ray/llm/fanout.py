"""complete_many: hundreds of calls in flight without a CPU (or a process) each.

Without Ray the batch is an asyncio.gather on this process's gateway loop.
With Ray it is split over a small pool of async GatewayActors per node
(num_cpus=0, max_concurrency 1000): one actor call per chunk, each actor
awaiting its chunk concurrently. Ray tasks with num_cpus=0 would instead cost
one worker process (~120 MB) per concurrently blocked call."""
from __future__ import annotations

import asyncio
import threading

from rlm_ray.errors import UserError
from rlm_ray.llm.budget import Budget
from rlm_ray.llm.config import DEFAULT_CONFIG, GatewayConfig
from rlm_ray.llm.gateway import acomplete_here, on_gateway_loop, run_sync
from rlm_ray.llm.types import BudgetExceeded, Completion, LLMError

NAMESPACE = "rlm_ray"
Outcome = Completion | LLMError | BudgetExceeded


async def _one(request: dict, model: str, config: GatewayConfig, budget: Budget | None,
               params: dict) -> Outcome:
    merged = {**params, **{k: v for k, v in request.items() if k != "messages"}}
    try:
        return await acomplete_here(request["messages"], model, config=config, budget=budget, **merged)
    except (LLMError, BudgetExceeded) as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - one bad slot never fails the batch
        return LLMError(f"{model}: {type(exc).__name__}: {exc}", model=model, kind="internal")


async def _gather(requests: list[dict], model: str, config: GatewayConfig,
                  budget: Budget | None, params: dict) -> list[Outcome]:
    return list(await asyncio.gather(*(_one(r, model, config, budget, params) for r in requests)))


async def acomplete_many(requests: list[dict], model: str, *, config: GatewayConfig | None = None,
                         budget: Budget | None = None, **params) -> list[Outcome]:
    """complete_many for async callers: the whole batch is one hop onto the gateway loop."""
    _validate(requests)
    return await on_gateway_loop(_gather(requests, model, config or DEFAULT_CONFIG, budget, params))


class GatewayActor:
    """Ray actor body: an async gateway process that many callers share."""

    def __init__(self) -> None:
        # Pay litellm's import and first call at creation, not inside a batch's first
        # sub-calls, then take what start-up left out of the collector's sight (rlm_ray/heap.py).
        from rlm_ray.heap import freeze_startup_heap
        from rlm_ray.llm.gateway import warm_up

        warm_up()
        freeze_startup_heap()

    async def run(self, requests: list[dict], model: str, config: GatewayConfig,
                  budget: Budget | None, params: dict) -> list[Outcome]:
        return await acomplete_many(requests, model, config=config, budget=budget, **params)

    def ping(self) -> bool:
        """Answers once the actor is up (and so warm: see __init__)."""
        return True


_pool_lock = threading.Lock()
_pools: dict[str, list] = {}


def gateway_actors(count: int) -> list:
    """This node's pool, created on first use by whoever gets there first."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    with _pool_lock:
        pool = _pools.get(node)
        if pool is None or len(pool) < count:
            actor_cls = ray.remote(num_cpus=0, max_concurrency=1000, max_restarts=-1)(GatewayActor)
            pool = [actor_cls.options(
                name=f"rlm-ray-gateway/{node}/{i}", namespace=NAMESPACE, lifetime="detached",
                get_if_exists=True,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True),
            ).remote() for i in range(count)]
            _pools[node] = pool
        return pool[:count]


def _ray_up() -> bool:
    import ray

    return ray.is_initialized()


def _validate(requests: list[dict]) -> None:
    if not isinstance(requests, list) or not all(isinstance(r, dict) and "messages" in r for r in requests):
        raise UserError("complete_many takes a list of {'messages': [...], **params} dicts")


def complete_many(requests: list[dict], *, model: str, config: GatewayConfig | None = None,
                  budget: Budget | None = None, use_ray: bool | None = None,
                  **params) -> list[Outcome]:
    """Results in request order; a failed call is an LLMError (or BudgetExceeded) in
    its slot, never an exception for the whole batch."""
    _validate(requests)
    if not requests:
        return []
    config = config or DEFAULT_CONFIG
    if use_ray is None:
        # A Budget made before Ray started lives in this process only: keep its calls here.
        use_ray = _ray_up() and (budget is None or budget.shared)
    if not use_ray:
        return run_sync(_gather(requests, model, config, budget, params))
    import ray

    actors = gateway_actors(max(1, min(config.gateway_actors, len(requests))))
    # Round-robin (not contiguous) chunks: similar prompts often sit next to each other.
    chunks = [list(range(i, len(requests), len(actors))) for i in range(len(actors))]
    refs = [actor.run.remote([requests[i] for i in idx], model, config, budget, params)
            for actor, idx in zip(actors, chunks)]
    results: list[Outcome | None] = [None] * len(requests)
    for idx, outcome in zip(chunks, ray.get(refs)):
        for i, value in zip(idx, outcome):
            results[i] = value
    return results
