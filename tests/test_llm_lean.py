"""The per-call bookkeeping litellm does for callbacks is skipped while none is
registered, and runs as ever once one is (over real loopback HTTP to the
provider SIMULATOR). litellm's first call, paid by a warm-up that sends nothing.
And the latency floor `bench compare` prints beside a run."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

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


WARM_UP_PROBE = r"""
import asyncio, json, sys, time
from rlm_ray.llm._litellm import litellm
from rlm_ray.llm.gateway import run_sync, warm_up

url, warm = sys.argv[1], sys.argv[2] == "warm"
lib = litellm()

async def call():
    return await lib.acompletion(model="openai/sim/echo", api_base=url, api_key="sim-no-key",
                                 messages=[{"role": "user", "content": "hello"}])

if warm:
    warm_up()
cpu = []
for _ in range(4):
    started = time.process_time()
    text = run_sync(call()).choices[0].message.content
    cpu.append(time.process_time() - started)
print(json.dumps({"cpu": cpu, "text": text}))
"""


def _first_call_cpu(url: str, mode: str) -> tuple[float, float]:
    """(first call's CPU, the cheapest later call's) in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", WARM_UP_PROBE, url, mode], capture_output=True,
                          text=True, timeout=300, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "hello" in out["text"]
    return out["cpu"][0], min(out["cpu"][1:])


def test_warm_up_takes_litellm_first_call_cost_off_the_first_real_call(sim):
    """litellm imports part of its request path on first use: tens of times a call's CPU.
    After warm_up (a mock call, never sent) the first real call costs about
    what later ones do. Ratios of CPU time, each against its own process."""
    server = sim()
    cold_first, cold_later = _first_call_cpu(server.base_url, "cold")
    warm_first, warm_later = _first_call_cpu(server.base_url, "warm")
    cold_ratio, warm_ratio = cold_first / cold_later, warm_first / warm_later
    assert cold_ratio > 3 * warm_ratio, (cold_ratio, warm_ratio)
    assert server.stats()["requests"] == 8    # 4 calls a process: the warm-up sent nothing
