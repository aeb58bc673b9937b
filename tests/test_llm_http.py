"""The gateway against the provider SIMULATOR over real loopback HTTP (litellm
-> aiohttp server): limits and 429 storms, every fault kind, errors that must
not be retried, cost, the response cache (local, a second process, S3), budgets."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from rlm_ray.llm import Budget, BudgetExceeded, Completion, GatewayConfig, LLMError
from rlm_ray.llm import acomplete, complete, complete_many
from rlm_ray.sim import POLICIES, register_policy

ECHO = "openai/sim/echo"
KNOWN = "openai/gpt-4o-mini"   # a name litellm prices; the simulator answers it too

if "gpt-4o-mini" not in POLICIES:
    @register_policy("gpt-4o-mini")
    def _priced_echo(messages: list[dict]) -> str:
        return "priced: " + str(messages[-1]["content"])


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def fast(server, **extra) -> GatewayConfig:
    """Local limiter (tests inspect it) and millisecond backoff."""
    return GatewayConfig(api_base=server.base_url, backoff_s=0.01, shared_limiter=False, **extra)


def gather(calls):
    async def run():
        return await asyncio.gather(*calls, return_exceptions=True)
    return asyncio.run(run())


@pytest.mark.timeout(120)
def test_429_storm_pauses_everyone_then_all_calls_succeed(sim):
    from rlm_ray.llm.limiter_client import limiter_for

    server = sim(latency_ms=20)
    config = fast(server, rpm=6000, window_s=6)
    complete(user("warm up"), ECHO, config=config)
    server.storm(3.0, retry_after_s=0.5)
    results = gather([acomplete(user(f"q{i}"), ECHO, config=config) for i in range(40)])
    assert all(isinstance(r, Completion) for r in results), results
    assert [r.text for r in results] == [f"q{i}" for i in range(40)]
    stats = server.stats()
    assert stats["by_status"][429] > 0
    assert sum(r.retries for r in results) == stats["by_status"][429]

    async def limiter_stats():
        return limiter_for(ECHO, config).stats()
    shared = asyncio.run(limiter_stats())
    assert shared["penalties"] >= 1 and shared["factor"] < 1.0
    # One storm is one back-off episode, not one per rejected caller.
    assert shared["penalties"] < stats["by_status"][429]


def test_retry_after_honoured_without_a_limiter(sim):
    server = sim()
    complete(user("warm up"), ECHO, config=fast(server))
    server.storm(1.0, retry_after_s=1.2)
    result = complete(user("hi"), ECHO, config=fast(server))
    assert result.retries == 1 and server.stats()["by_status"][429] == 1


@pytest.mark.parametrize("kind", ["500", "503", "malformed", "truncated"])
def test_faults_are_retried_and_counted(sim, kind):
    server = sim(fail_first_n=2, faults=(kind,))
    result = complete(user("hello"), ECHO, config=fast(server))
    assert (result.text, result.retries) == ("hello", 2)
    stats = server.stats()
    assert stats["faults"] == {kind: 2} and stats["completions"] == 1


def test_hung_connection_times_out_and_is_retried(sim):
    server = sim(fail_first_n=1, faults=("hang",), hang_s=20)
    result = complete(user("hello"), ECHO, config=fast(server, timeout_s=0.5))
    assert result.retries == 1 and result.text == "hello"


def test_retries_exhausted_is_an_llm_error(sim):
    server = sim(fail_rate=1.0, faults=("500",))
    with pytest.raises(LLMError) as info:
        complete(user("x"), ECHO, config=fast(server, max_retries=3))
    assert info.value.retries == 3 and info.value.kind == "server_error"
    assert server.stats()["requests"] == 4
    assert "gave up after 3 retries" in str(info.value) and ECHO in str(info.value)


def test_auth_error_is_not_retried_and_never_shows_the_key(sim):
    server = sim()
    with pytest.raises(LLMError) as info:
        complete(user("x"), ECHO, config=fast(server, api_key="sim-bad-key"))
    assert info.value.kind == "auth" and info.value.retries == 0
    assert server.stats()["requests"] == 1
    assert "sim-bad-key" not in str(info.value) and ECHO in str(info.value)


def test_context_length_and_unknown_model_fail_at_once(sim):
    server = sim(context_window=50)
    with pytest.raises(LLMError) as info:
        complete(user("word " * 200), ECHO, config=fast(server))
    assert info.value.kind == "context_length" and "maximum context length" in str(info.value)
    with pytest.raises(LLMError) as info:
        complete(user("x"), "openai/sim/no-such-policy", config=fast(server))
    assert info.value.kind == "not_found"
    assert server.stats()["requests"] == 2


def test_cost_of_a_known_model_equals_litellms_figure(sim):
    import litellm

    server = sim()
    result = complete(user("what does this cost?"), KNOWN, config=fast(server))
    stats = server.stats()
    assert (result.prompt_tokens, result.completion_tokens) == (stats["prompt_tokens"], stats["completion_tokens"])
    prompt_usd, completion_usd = litellm.cost_per_token(
        model=KNOWN, prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
    assert result.cost_usd == pytest.approx(prompt_usd + completion_usd, rel=1e-12)
    assert result.cost_usd > 0


def test_unknown_price_is_none_and_user_table_prices_it(sim):
    server = sim()
    assert complete(user("x"), ECHO, config=fast(server)).cost_usd is None
    priced = fast(server, prices={ECHO: {"input_per_1m": 1.0, "output_per_1m": 2.0}})
    result = complete(user("x"), ECHO, config=priced)
    assert result.cost_usd == pytest.approx((result.prompt_tokens * 1 + result.completion_tokens * 2) / 1e6)


def test_prompt_estimate_matches_provider_usage(sim):
    from rlm_ray.tokens import chat_prompt_tokens

    server = sim()
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Count me, please."}]
    assert complete(messages, ECHO, config=fast(server)).prompt_tokens == chat_prompt_tokens(messages)


@pytest.mark.timeout(180)
def test_long_prompts_sized_from_a_sample_meet_no_429_from_an_exact_token_limit(sim):
    # The limiter books long prompts from a sampled estimate (tokens.estimate_tokens),
    # not a full count; the simulator charges every prompt exactly. The estimate
    # leans high, so a batch the token limit spreads over several windows meets no 429.
    import inspect
    import json
    import random

    rng = random.Random(3)
    source = inspect.getsource(inspect)
    texts = [source[i * 6000:(i + 1) * 6000] for i in range(3)]
    texts += [json.dumps([{"id": i, "v": rng.random()} for i in range(160)])]
    texts += ["".join(f"record {i}: user_{rng.randrange(97)} said 'ünïcode'\n" for i in range(170))
              for _ in range(2)]
    server = sim(tpm=6000, window_s=3.0)
    config = fast(server, tpm=6000, window_s=3.0)
    requests = [{"messages": user(text), "max_tokens": 64} for text in texts]
    results = complete_many(requests, model=ECHO, config=config, use_ray=False)
    assert all(isinstance(r, Completion) for r in results), results
    stats = server.stats()
    assert sum(r.prompt_tokens for r in results) > 1.5 * 6000   # the limit really paced them
    assert stats["by_status"].get("429", stats["by_status"].get(429, 0)) == 0, stats["by_status"]


def test_cache_hit_reaches_no_provider_even_from_another_process(sim, tmp_path):
    server = sim()
    config = fast(server, cache_uri=str(tmp_path / "cache"))
    first = complete(user("cache me"), KNOWN, config=config, temperature=0)
    second = complete(user("cache me"), KNOWN, config=config, temperature=0)
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert second.text == first.text and second.cost_usd == 0.0
    assert server.stats()["requests"] == 1
    # Non-deterministic calls are not cached in "auto" mode.
    complete(user("cache me"), KNOWN, config=config, temperature=0.7)
    complete(user("cache me"), KNOWN, config=config, temperature=0.7)
    assert server.stats()["requests"] == 3

    script = (
        "import json, sys\n"
        "from rlm_ray.llm import GatewayConfig, complete\n"
        f"c = complete([{{'role': 'user', 'content': 'cache me'}}], {KNOWN!r}, temperature=0,\n"
        f"    config=GatewayConfig(api_base={server.base_url!r}, cache_uri={str(tmp_path / 'cache')!r}))\n"
        "print(json.dumps(c.to_dict()))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["cache_hit"] is True
    assert server.stats()["requests"] == 3


@pytest.mark.timeout(120)
def test_s3_cache_makes_a_resumed_batch_pay_nothing_twice(sim, s3_bucket):
    from rlm_ray.llm import cache as cache_module

    server = sim()
    config = fast(server, cache_uri=f"s3://{s3_bucket}/llm-cache", cache_mode="always")
    first = complete_many([{"messages": user(f"doc {i}")} for i in range(6)], model=ECHO,
                          config=config, use_ray=False)
    assert all(not r.cache_hit for r in first) and server.stats()["requests"] == 6
    cache_module._caches.clear()   # a fresh run: nothing in memory, only what is on S3
    resumed = complete_many([{"messages": user(f"doc {i}")} for i in range(8)], model=ECHO,
                            config=config, use_ray=False)
    assert [r.cache_hit for r in resumed] == [True] * 6 + [False] * 2
    assert [r.text for r in resumed] == [f"doc {i}" for i in range(8)]
    assert server.stats()["requests"] == 8


def test_budget_is_never_overdrawn_by_concurrent_calls(sim):
    server = sim(latency_ms=30)
    config = fast(server)
    budget = Budget(tokens=1000)
    calls = [acomplete(user(f"question number {i}"), ECHO, config=config, budget=budget, max_tokens=40)
             for i in range(40)]
    results = gather(calls)
    done = [r for r in results if isinstance(r, Completion)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert done and refused and len(done) + len(refused) == 40
    assert all(r.kind == "tokens" for r in refused)
    used = budget.used()
    assert used["tokens"] == sum(r.prompt_tokens + r.completion_tokens for r in done) <= 1000
    assert server.stats()["requests"] == len(done)


def test_dollar_budget_on_a_priced_model(sim):
    server = sim()
    budget = Budget(usd=0.0001)
    with pytest.raises(BudgetExceeded) as info:
        for i in range(1000):
            complete(user(f"spend {i}"), KNOWN, config=fast(server), budget=budget, max_tokens=20)
    assert info.value.kind == "usd"
    assert budget.used()["usd"] <= 0.0001


def test_complete_many_keeps_order_and_isolates_failures(sim):
    # A latency longer than the setup of 300 calls, so all can be out at once.
    server = sim(context_window=60, latency_ms=3000)
    requests = [{"messages": user(f"item {i}")} for i in range(300)]
    requests[7] = {"messages": user("too long " * 100)}
    results = complete_many(requests, model=ECHO, config=fast(server), use_ray=False)
    assert isinstance(results[7], LLMError) and results[7].kind == "context_length"
    assert [r.text for i, r in enumerate(results) if i != 7] == [f"item {i}" for i in range(300) if i != 7]
    # All in flight together on one event loop: no thread or process per call.
    assert server.stats()["max_concurrency"] >= 200


def test_one_process_holds_more_calls_in_flight_than_litellms_pool_default(sim):
    # litellm's aiohttp pool would hold 500 connections per host and queue the rest
    # unseen; the gateway's limiter, not the pool, decides what is in flight. The
    # latency is long enough that a loaded machine still sends all 640 within it.
    server = sim(latency_ms=10_000)
    requests = [{"messages": user(f"item {i}")} for i in range(640)]
    results = complete_many(requests, model=ECHO, config=fast(server), use_ray=False)
    assert [r.text for r in results] == [f"item {i}" for i in range(640)]
    assert server.stats()["max_concurrency"] > 560


def test_a_wave_sends_its_first_requests_while_the_rest_are_still_being_set_up(sim):
    # Each call's setup (token count, litellm's request building) costs a few ms of
    # CPU. Run for the whole wave before the first request left, it delayed every
    # answer by the setup of all 400; passed a few per loop turn, the first requests
    # leave while most of the wave is still waiting for its setup. Counted, not
    # timed: how many setups had begun when the provider saw its first request.
    from rlm_ray.llm.gateway import setup_executor

    server = sim(latency_ms=1000)
    config = fast(server, rpm=10**9, tpm=10**12)
    complete(user("warm up"), ECHO, config=config)
    executor = setup_executor()
    inline_before = executor.inline_runs
    begun_at_first_request: list[int] = []
    stats = server.simulator.stats
    request_started = stats.request_started

    def note_first_request() -> None:
        if not begun_at_first_request:
            begun_at_first_request.append(executor.inline_runs - inline_before)
        request_started()

    stats.request_started = note_first_request
    requests = [{"messages": user(f"item {i} " + "word " * 300)} for i in range(400)]
    results = complete_many(requests, model=ECHO, config=config, use_ray=False)
    assert all(isinstance(r, Completion) for r in results), results
    # litellm's setup of these OpenAI-wire calls ran on the loop, without a thread hop.
    assert executor.inline_runs - inline_before == 400
    assert begun_at_first_request[0] <= 400 // 4, begun_at_first_request


def test_transport_params_per_call_go_to_the_config(sim):
    server = sim()
    result = complete(user("routed"), ECHO, api_base=server.base_url, timeout=5, num_retries=3)
    assert result.text == "routed" and server.stats()["requests"] == 1


def test_identical_calls_in_flight_share_one_request(sim, tmp_path):
    server = sim(latency_ms=100)
    config = fast(server, cache_uri=str(tmp_path / "cache"))
    results = gather([acomplete(user("same question"), ECHO, config=config, temperature=0)
                      for _ in range(10)])
    assert [r.text for r in results] == ["same question"] * 10
    assert sum(not r.cache_hit for r in results) == 1
    assert server.stats()["requests"] == 1
