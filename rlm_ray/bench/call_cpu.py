"""`python -m rlm_ray.bench.call_cpu`: the CPU one model call costs us, in
microseconds of process CPU (user + system) per call, against the provider
SIMULATOR at zero latency (a child process, whose own CPU is not counted).

Rows: litellm.acompletion alone (what reaching a provider through litellm
costs at least); our gateway in this process without and with the RPM/TPM
limiter, also with litellm's request setup sent to a thread as litellm does it
(the gateway runs it inline where it cannot block); and complete_many through
Ray's gateway actors, counting the CPU of every process that does the work
(this driver, the gateway actors, the limiter actor). Prompts are the size of
a small fan-out sub-call (200 words; --prompt-words). The in-process rows run in interleaved
rounds, so a machine whose speed drifts during the run skews them alike."""
from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass

MODEL = "openai/sim/echo"
LABEL = "CPU per model call against the provider SIMULATOR (not a real provider), 0 ms latency"


PROMPT_WORDS = 200   # a fan-out sub-call's prompt is 200-2,000 words; --prompt-words sets it


def _messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Count the records labelled 'x' in chunk {i}.\n"
             + "word " * PROMPT_WORDS}]


@dataclass
class Row:
    name: str
    calls: int
    ok: int
    cpu_s: float
    wall_s: float

    @property
    def us_per_call(self) -> float:
        return self.cpu_s / self.calls * 1e6


def _in_process_rows(url: str, calls: int, concurrency: int, rounds: int) -> list[Row]:
    from rlm_ray.llm._litellm import litellm
    from rlm_ray.llm.config import GatewayConfig
    from rlm_ray.llm.gateway import acomplete_here, run_sync, setup_executor

    plain = GatewayConfig(api_base=url, cache_mode="off", shared_limiter=False)
    limited = plain.with_(rpm=1e9, tpm=1e12)

    def bare(i: int):
        return litellm().acompletion(model=MODEL, messages=_messages(i), api_base=url,
                                     api_key="sim-no-key", num_retries=0, max_retries=0)

    def gateway(config: GatewayConfig):
        return lambda i: acomplete_here(_messages(i), MODEL, config=config)

    # name -> (call, may the gateway run litellm's setup inline)
    kinds = {"litellm.acompletion alone": (bare, True),
             "gateway + RPM/TPM limiter, litellm's setup on a thread": (gateway(limited), False),
             "gateway, no limiter": (gateway(plain), True),
             "gateway + RPM/TPM limiter": (gateway(limited), True)}

    async def batch(call, first: int, n: int) -> int:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int):
            async with gate:
                return await call(i)
        done = await asyncio.gather(*(one(first + i) for i in range(n)), return_exceptions=True)
        return sum(1 for d in done if not isinstance(d, BaseException))

    async def measure() -> list[Row]:
        rows = {name: Row(name + ", 1 process", 0, 0, 0.0, 0.0) for name in kinds}
        for offset, (call, inline) in enumerate(kinds.values()):
            setup_executor().inline = inline
            await batch(call, 10_000_000 * (offset + 1), min(50, calls))   # warm: imports, clients
        for r in range(rounds):
            share = calls // rounds + (r < calls % rounds)
            for offset, (name, (call, inline)) in enumerate(kinds.items()):
                setup_executor().inline = inline
                cpu, wall = time.process_time(), time.perf_counter()
                rows[name].ok += await batch(call, 1_000_000 * (offset + 1) + rows[name].calls, share)
                rows[name].cpu_s += time.process_time() - cpu
                rows[name].wall_s += time.perf_counter() - wall
                rows[name].calls += share
        setup_executor().inline = True
        return list(rows.values())
    return run_sync(measure())


def wave_timing(calls: int, latency_ms: float, freeze: bool = False) -> dict:
    """One wave of `calls` through the gateway (+ limiter) in this process, all
    started at once against the SIMULATOR at `latency_ms`: when the first, the
    median and the last answer came back, beyond the provider's latency (the
    first says how long the wave's own setup held back its first request), and
    this process's CPU and the garbage collector's share of it. `freeze`: settle
    the heap after warm-up as rlm-ray's actors do (rlm_ray/heap.py)."""
    import gc

    from rlm_ray.bench.compare import Limits, Simulator
    from rlm_ray.heap import freeze_startup_heap
    from rlm_ray.llm.config import GatewayConfig
    from rlm_ray.llm.gateway import acomplete_here, run_sync

    collecting = {"since": 0.0, "total": 0.0}

    def on_collection(phase: str, _info: dict) -> None:
        if phase == "start":
            collecting["since"] = time.process_time()
        else:
            collecting["total"] += time.process_time() - collecting["since"]

    async def wave(config: GatewayConfig, first: int, n: int) -> list[float]:
        started = time.perf_counter()

        async def one(i: int) -> float:
            await acomplete_here(_messages(i), MODEL, config=config)
            return time.perf_counter() - started
        return sorted(await asyncio.gather(*(one(first + i) for i in range(n))))

    with Simulator(Limits(latency_ms=latency_ms, rpm=1e9, tpm=1e12)) as sim:
        config = GatewayConfig(api_base=sim.base_url, cache_mode="off", shared_limiter=False,
                               rpm=1e9, tpm=1e12)
        run_sync(wave(config, 20_000_000, min(50, calls)))   # warm: imports, clients
        if freeze:
            freeze_startup_heap()
        gc.callbacks.append(on_collection)
        cpu = time.process_time()
        try:
            done = run_sync(wave(config, 30_000_000, calls))
        finally:
            gc.callbacks.remove(on_collection)
        cpu = time.process_time() - cpu
    latency_s = latency_ms / 1000
    return {"first": done[0] - latency_s, "median": done[len(done) // 2] - latency_s,
            "last": done[-1] - latency_s, "cpu_s": cpu, "gc_s": collecting["total"]}


def _cpu_of(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _worker_pids(class_names: tuple[str, ...]) -> list[int]:
    """Actor processes of the local Ray this driver started (its descendants):
    Ray titles an actor's worker process `ray::<class>`."""
    import psutil

    pids = []
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if any(title.startswith(f"ray::{name}") for name in class_names):
            pids.append(proc.pid)
    return pids


def _ray_row(url: str, calls: int, actors: int) -> Row:
    from rlm_ray.llm.config import GatewayConfig
    from rlm_ray.llm.fanout import complete_many

    config = GatewayConfig(api_base=url, cache_mode="off", rpm=1e9, tpm=1e12, gateway_actors=actors)
    complete_many([{"messages": _messages(-i)} for i in range(1, 101)], model=MODEL, config=config)
    pids = [os.getpid(), *_worker_pids(("GatewayActor", "LimiterActor"))]
    cpu, wall = _cpu_of(pids), time.perf_counter()
    results = complete_many([{"messages": _messages(i)} for i in range(calls)], model=MODEL, config=config)
    ok = sum(1 for r in results if hasattr(r, "text"))
    return Row(f"complete_many via {actors} Ray gateway actors (+ limiter actor, driver)", calls, ok,
               _cpu_of(pids) - cpu, time.perf_counter() - wall)


def run(calls: int, concurrency: int, actors: int, use_ray: bool, rounds: int = 5) -> list[Row]:
    """Rows printed as they are measured (Ray's start-up can fail on a loaded host)."""
    from rlm_ray.bench.compare import Limits, Simulator

    print(f"{LABEL}\n\n| path | calls | ok | CPU us/call | wall s |\n|---|---|---|---|---|", flush=True)
    with Simulator(Limits(latency_ms=0, rpm=1e9, tpm=1e12)) as sim:
        rows = _in_process_rows(sim.base_url, calls, concurrency, min(rounds, calls))
        for row in rows:
            print(render(row), flush=True)
        if use_ray:
            from rlm_ray._ray import ensure_ray

            ensure_ray()
            rows.append(_ray_row(sim.base_url, calls, actors))
            print(render(rows[-1]), flush=True)
    return rows


def render(row: Row) -> str:
    return f"| {row.name} | {row.calls} | {row.ok} | {row.us_per_call:.0f} | {row.wall_s:.1f} |"


def main(argv: list[str] | None = None) -> int:
    global PROMPT_WORDS
    parser = argparse.ArgumentParser(prog="python -m rlm_ray.bench.call_cpu", description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=64, help="in-process calls in flight")
    parser.add_argument("--actors", type=int, default=2, help="gateway actors for the Ray row")
    parser.add_argument("--rounds", type=int, default=5,
                        help="the in-process rows take turns in this many rounds")
    parser.add_argument("--no-ray", action="store_true", help="in-process rows only")
    parser.add_argument("--prompt-words", type=int, default=PROMPT_WORDS,
                        help="words per prompt (long prompts: what sizing them for the limiter costs)")
    parser.add_argument("--wave", type=int, metavar="N",
                        help="instead: time one wave of N calls at --latency-ms (first/median/last answer)")
    parser.add_argument("--latency-ms", type=float, default=1000.0, help="the simulator's latency for --wave")
    parser.add_argument("--freeze", action="store_true",
                        help="with --wave: freeze the start-up heap first, as rlm-ray's actors do")
    args = parser.parse_args(argv)
    if args.prompt_words < 1:
        parser.error("--prompt-words must be at least 1")
    PROMPT_WORDS = args.prompt_words
    if args.wave is not None:
        if args.wave < 1 or args.latency_ms < 0:
            parser.error("--wave must be at least 1 and --latency-ms at least 0")
        seen = wave_timing(args.wave, args.latency_ms, args.freeze)
        print(f"{args.wave} calls at once through the gateway, 1 process, against the provider "
              f"SIMULATOR at {args.latency_ms:g} ms: answers beyond the latency: first "
              f"{seen['first']:.2f} s, median {seen['median']:.2f} s, last {seen['last']:.2f} s; "
              f"process CPU {seen['cpu_s']:.2f} s, of which garbage collection {seen['gc_s']:.2f} s"
              + (" (start-up heap frozen)" if args.freeze else ""))
        return 0
    if args.freeze:
        parser.error("--freeze goes with --wave")
    if min(args.calls, args.concurrency, args.actors, args.rounds) < 1:
        parser.error("--calls, --concurrency, --actors and --rounds must be at least 1")
    rows = run(args.calls, args.concurrency, args.actors, not args.no_ray, args.rounds)
    return 0 if all(r.ok == r.calls for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
