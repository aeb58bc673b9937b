"""The gateway across Ray workers: one limiter actor keeps several processes
under the provider's limit; complete_many fans out through the async gateway
actors; a Budget and the response cache are shared by every worker."""
from __future__ import annotations

import pytest

from rlm_ray.llm import Budget, BudgetExceeded, Completion, GatewayConfig, LLMError, complete, complete_many

ECHO = "openai/sim/echo"


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.mark.timeout(180)
def test_limiter_keeps_many_workers_under_the_providers_window(ray_session, sim):
    ray = ray_session
    rpm, window_s = 150, 6.0
    server = sim(rpm=rpm, window_s=window_s, latency_ms=20)
    config = GatewayConfig(api_base=server.base_url, rpm=rpm, window_s=window_s)

    # Defined here (pickled by value): Ray workers cannot import test modules.
    @ray.remote(num_cpus=0)
    class Caller:
        async def run(self, tag: str, n: int, model: str, config: GatewayConfig) -> list[int]:
            import asyncio

            from rlm_ray.llm import LLMError, acomplete

            # Warm the worker first (litellm's lazy first-call set-up stalls the loop for
            # seconds): an unknown model is refused before the simulator's rate window.
            try:
                await acomplete([{"role": "user", "content": "warm"}], "openai/sim/warm-up",
                                config=config.with_(rpm=None))
            except LLMError:
                pass
            results = await asyncio.gather(*(
                acomplete([{"role": "user", "content": f"{tag}-{i}"}], model, config=config)
                for i in range(n)))
            return [r.retries for r in results]

    callers = [Caller.remote() for _ in range(4)]
    retries = ray.get([c.run.remote(f"w{k}", 50, ECHO, config) for k, c in enumerate(callers)])
    stats = server.stats()
    assert stats["completions"] == 200 and stats["by_status"].get(404) == 4
    assert stats["by_status"].get(429, 0) == 0 and sum(map(sum, retries)) == 0
    assert stats["windows"]["max_requests"] <= rpm
    # ...and the limit is used, not just respected: 200 calls need >= 2 windows' worth.
    assert stats["windows"]["max_requests"] >= 0.6 * rpm
    for caller in callers:
        ray.kill(caller)


@pytest.mark.timeout(120)
def test_complete_many_through_gateway_actors(ray_session, sim):
    # 3 s: long enough that a loaded machine sends the whole batch within one latency.
    server = sim(latency_ms=3000, context_window=60)
    requests = [{"messages": user(f"item {i}")} for i in range(300)]
    requests[11] = {"messages": user("too long " * 100)}
    results = complete_many(requests, model=ECHO, config=GatewayConfig(api_base=server.base_url))
    assert isinstance(results[11], LLMError) and results[11].kind == "context_length"
    assert [r.text for i, r in enumerate(results) if i != 11] == [f"item {i}" for i in range(300) if i != 11]
    # Hundreds in flight at once from two async actors that reserve no CPU.
    assert server.stats()["max_concurrency"] >= 150


@pytest.mark.timeout(120)
def test_settles_reach_the_limiter_actor_in_batches_not_one_call_each(ray_session):
    import asyncio
    import uuid

    from rlm_ray.llm.limiter import Limits
    from rlm_ray.llm.limiter_client import SharedLimiter, limiter_actor

    ray = ray_session
    actor = limiter_actor(f"settle-test/{uuid.uuid4().hex}", Limits(rpm=6000, tpm=10**7))

    async def answers_arrive() -> None:
        limiter = SharedLimiter(actor)
        tickets = [await limiter.acquire(100, 50) for _ in range(101)]
        for ticket in tickets[:100]:   # answers of a wave, each on its own turn of the loop
            limiter.settle(ticket, 140, 40)
            await asyncio.sleep(0)
        await asyncio.sleep(0.5)   # the coalesced batch goes out shortly after
        assert ray.get(actor.stats.remote())["actor_calls"]["settle_many"] <= 10
        # The last call out is settled at once: a process may end right after it.
        limiter.settle(tickets[100], 140, 40)

    asyncio.run(answers_arrive())
    calls = ray.get(actor.stats.remote())["actor_calls"]
    assert calls["reserve_many"] == 101
    # One actor call per answer before; now the answers share a few round trips,
    # and the last one went without waiting for the timer (the loop is gone).
    assert 2 <= calls["settle_many"] <= 11


@pytest.mark.timeout(120)
def test_budget_is_shared_atomically_across_actors(ray_session, sim):
    server = sim(latency_ms=20)
    budget = Budget(calls=50)
    results = complete_many([{"messages": user(f"b{i}")} for i in range(120)], model=ECHO,
                            config=GatewayConfig(api_base=server.base_url), budget=budget)
    assert sum(isinstance(r, Completion) for r in results) == 50
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(refused) == 70 and all(r.kind == "calls" for r in refused)
    assert budget.used()["calls"] == 50 and server.stats()["requests"] == 50


@pytest.mark.timeout(120)
def test_cache_written_by_the_driver_is_hit_by_gateway_actors(ray_session, sim, tmp_path):
    server = sim()
    config = GatewayConfig(api_base=server.base_url, cache_uri=str(tmp_path / "cache"))
    prompts = [{"messages": user(f"shared {i}")} for i in range(10)]
    for p in prompts:
        complete(p["messages"], ECHO, config=config, temperature=0)
    assert server.stats()["requests"] == 10
    results = complete_many(prompts, model=ECHO, config=config, temperature=0)
    assert all(r.cache_hit and r.cost_usd == 0.0 for r in results)
    assert server.stats()["requests"] == 10


@pytest.mark.timeout(300)
def test_gateway_actors_keep_their_start_up_heap_out_of_the_collectors_sight(ray_session):
    import ray

    from rlm_ray.llm.fanout import gateway_actors

    def heap(_actor) -> tuple[int, int]:
        import gc
        return gc.get_freeze_count(), gc.get_threshold()[0]

    for actor in gateway_actors(2):
        frozen, young = ray.get(actor.__ray_call__.remote(heap), timeout=240)
        assert frozen > 100_000 and young >= 10_000, (frozen, young)
