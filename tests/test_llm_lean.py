"""The per-call bookkeeping litellm does for callbacks is skipped while none is
registered, and runs as ever once one is (over real loopback HTTP to the
provider SIMULATOR). And the latency floor `bench compare` prints beside a run."""
from __future__ import annotations

import asyncio

from rlm_ray.bench.floor import latency_floor
from rlm_ray.llm import GatewayConfig, acomplete

ECHO = "openai/sim/echo"


def test_litellm_bookkeeping_runs_only_for_registered_callbacks(sim):
    from rlm_ray.llm._litellm import litellm

    lib = litellm()
    server = sim()
    config = GatewayConfig(api_base=server.base_url, shared_limiter=False)

    async def raw_call(text: str):
        return await lib.acompletion(model=ECHO, messages=[{"role": "user", "content": text}],
                                     api_base=server.base_url, api_key="sim-no-key")

    async def scenario():
        seen = []

        async def on_success(kwargs, response, start, end):
            seen.append(response.choices[0].message.content)

        quiet = await raw_call("no logger")
        lib.success_callback = [on_success]
        try:
            logged = await raw_call("logged")
            for _ in range(100):       # litellm logs on a background task
                if seen:
                    break
                await asyncio.sleep(0.05)
        finally:
            # litellm copies a registered function into its internal async list too
            from rlm_ray.llm._litellm import _CALLBACK_LISTS
            for name in _CALLBACK_LISTS:
                if getattr(lib, name, None):
                    setattr(lib, name, [])
        quiet_again = await raw_call("no logger again")
        through_gateway = await acomplete([{"role": "user", "content": "gateway"}], ECHO, config=config)
        return quiet, logged, seen, quiet_again, through_gateway

    from rlm_ray.llm.gateway import run_sync
    quiet, logged, seen, quiet_again, through_gateway = run_sync(scenario())
    assert quiet.choices[0].message.content == "no logger" and quiet.usage.prompt_tokens > 0
    for unlogged in (quiet, quiet_again):
        assert "response_cost" not in (getattr(unlogged, "_hidden_params", None) or {})
    assert seen and set(seen) == {"redacted-by-litellm"}   # prompts and replies never reach loggers
    assert "response_cost" in logged._hidden_params
    assert through_gateway.text == "gateway" and through_gateway.prompt_tokens > 0


def test_latency_floor_counts_root_turns_and_sub_call_waves():
    calls = [{"kind": k} for k in ["root", "root", "sub", "root", *["sub"] * 5, "root", "rlm"]]
    assert latency_floor(calls, 2.0) == (4, 2, 12.0)
    assert latency_floor([], 2.0) == (0, 0, 0.0)
