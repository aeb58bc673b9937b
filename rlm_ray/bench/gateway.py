"""`rlm-ray bench gateway`: what the gateway achieves against the provider
SIMULATOR (a child process, so it does not share the client's interpreter).

Rows: (a) requests/min achieved / RPM limit, in-process and through Ray's
gateway actors; (b) tokens/min achieved / TPM limit; (c) per-call CPU the
gateway adds on top of litellm, and calls/s at zero latency in one process
and over two gateway actors; (d) the (a) workload through plain
litellm.acompletion + asyncio.Semaphore (no limiter), for comparison."""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

from rlm_ray.llm.gateway import run_sync  # every litellm call in this process shares one loop
from rlm_ray.bench.sim import sim_process
from rlm_ray.sim.server import fetch_stats

MODEL = "openai/sim/echo"
LABEL = "rlm-ray gateway vs the provider SIMULATOR (not a real provider)"


def _messages(i: int, words: int = 12) -> list[dict]:
    # Distinct prompts (no cache effects), a fixed size (~words tokens each way).
    return [{"role": "user", "content": f"request {i}: " + " ".join(["token"] * words)}]


@dataclass
class Row:
    name: str
    calls: int
    ok: int
    wall_s: float
    limit: str = ""
    achieved: str = ""
    utilisation: float | None = None
    sim: dict = field(default_factory=dict)
    note: str = ""
    window_share: float | None = None   # the simulator's busiest window / limit

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.wall_s if self.wall_s else 0.0


def _flags(latency_ms: float, rpm: float | None = None, tpm: float | None = None,
           window_s: float = 60.0) -> list[str]:
    flags = ["--latency-ms", str(latency_ms), "--window-s", str(window_s)]
    if rpm:
        flags += ["--rpm", str(rpm)]
    if tpm:
        flags += ["--tpm", str(tpm)]
    return flags


def _outcome_counts(results: list) -> int:
    from rlm_ray.llm.types import Completion

    return sum(isinstance(r, Completion) for r in results)


def _gateway_run(base_url: str, calls: int, *, use_ray: bool, **limits) -> tuple[int, float]:
    from rlm_ray.llm import GatewayConfig
    from rlm_ray.llm.fanout import complete_many

    config = GatewayConfig(api_base=base_url, **limits)
    requests = [{"messages": _messages(i)} for i in range(calls)]
    complete_many([{"messages": _messages(-1)}], model=MODEL, config=config.with_(rpm=None, tpm=None),
                  use_ray=use_ray)   # warm up: imports, connections, actors
    started = time.perf_counter()
    results = complete_many(requests, model=MODEL, config=config, use_ray=use_ray)
    return _outcome_counts(results), time.perf_counter() - started


def rate_row(name: str, calls: int, latency_ms: float, *, rpm: float | None = None,
             tpm: float | None = None, use_ray: bool = False) -> Row:
    with sim_process(*_flags(latency_ms, rpm, tpm)) as url:
        limits = {"rpm": rpm, "tpm": tpm}
        ok, wall = _gateway_run(url, calls, use_ray=use_ray, **limits)
        stats = fetch_stats(url)
    minutes = wall / 60.0
    if rpm:
        achieved = calls / minutes
        row = Row(name, calls, ok, wall, f"{rpm:g} RPM", f"{achieved:.0f} RPM", achieved / rpm)
        row.window_share = stats["windows"]["max_requests"] / rpm
    else:
        tokens = stats["prompt_tokens"] + stats["completion_tokens"]
        achieved = tokens / minutes
        row = Row(name, calls, ok, wall, f"{tpm:g} TPM", f"{achieved:.0f} TPM", achieved / tpm)
        row.window_share = stats["windows"]["max_tokens"] / tpm
    row.sim = stats
    return row


async def _plain_litellm(base_url: str, calls: int, concurrency: int) -> tuple[int, float]:
    from rlm_ray.llm._litellm import litellm

    lib = litellm()
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> bool:
        async with semaphore:
            try:
                await lib.acompletion(model=MODEL, messages=_messages(i), api_base=base_url,
                                      api_key="no-key")
                return True
            except Exception:  # noqa: BLE001 - counting failures is the point
                return False

    await one(-1)
    started = time.perf_counter()
    done = await asyncio.gather(*(one(i) for i in range(calls)))
    return sum(done), time.perf_counter() - started


def plain_row(calls: int, latency_ms: float, rpm: float, concurrency: int) -> Row:
    with sim_process(*_flags(latency_ms, rpm)) as url:
        ok, wall = run_sync(_plain_litellm(url, calls, concurrency))
        stats = fetch_stats(url)
    # No rate here: without a limiter the calls go in bursts (a window's worth at once,
    # then 429s until the window slides), so calls/wall is not a utilisation.
    row = Row(f"(d) plain litellm.acompletion, Semaphore({concurrency}), no limiter", calls, ok,
              wall, f"{rpm:g} RPM", f"{calls - ok} failed", None, stats,
              "litellm defaults (its own retries on)")
    row.window_share = stats["windows"]["max_requests"] / rpm
    return row


def overhead_rows(calls: int, concurrency: int) -> list[Row]:
    """Zero-latency simulator: CPU per call through plain litellm vs the gateway
    (same concurrency, same process), then the gateway over two actors."""
    from rlm_ray.llm import GatewayConfig
    from rlm_ray.llm._litellm import litellm
    from rlm_ray.llm.gateway import acomplete_here

    rows = []
    with sim_process(*_flags(0)) as url:
        lib = litellm()
        config = GatewayConfig(api_base=url, shared_limiter=False)

        async def plain(n: int):
            semaphore = asyncio.Semaphore(concurrency)

            async def one(i: int):
                async with semaphore:
                    return await lib.acompletion(model=MODEL, messages=_messages(i), api_base=url,
                                                 api_key="no-key", num_retries=0, max_retries=0)
            return await asyncio.gather(*(one(i) for i in range(n)))

        async def gateway(n: int, limited: bool):
            cfg = config.with_(rpm=1e9, tpm=1e12) if limited else config
            semaphore = asyncio.Semaphore(concurrency)

            async def one(i: int):
                async with semaphore:
                    return await acomplete_here(_messages(i), MODEL, config=cfg)
            return await asyncio.gather(*(one(i) for i in range(n)))

        async def measure(factory) -> tuple[float, float]:
            await factory(20)   # warm up
            cpu, wall = time.process_time(), time.perf_counter()
            await factory(calls)
            return time.process_time() - cpu, time.perf_counter() - wall

        async def all_three():
            return (await measure(plain), await measure(lambda n: gateway(n, False)),
                    await measure(lambda n: gateway(n, True)))

        (p_cpu, p_wall), (g_cpu, g_wall), (l_cpu, l_wall) = run_sync(all_three())
        base_ms = p_cpu / calls * 1000
        rows.append(Row("(c) plain litellm, 1 process, 0 ms latency", calls, calls, p_wall,
                        achieved=f"{base_ms:.2f} ms CPU/call", note="baseline"))
        for name, cpu, wall in (("gateway, no limits", g_cpu, g_wall),
                                ("gateway + RPM/TPM limiter", l_cpu, l_wall)):
            extra = (cpu - p_cpu) / calls * 1000
            rows.append(Row(f"(c) {name}, 1 process, 0 ms latency", calls, calls, wall,
                            achieved=f"{cpu / calls * 1000:.2f} ms CPU/call",
                            note=f"overhead {extra:+.2f} ms/call vs litellm (target <= 2)"))
        if not _ray_up():
            return rows
        stats_before = fetch_stats(url)["completions"]
        ok, wall = _gateway_ray_throughput(url, calls)
        rows.append(Row("(c) gateway via 2 Ray gateway actors (2 cores), 0 ms latency", calls, ok,
                        wall, note="target >= 300 calls/s"))
        rows[-1].sim = {"completions": fetch_stats(url)["completions"] - stats_before}
    return rows


def _gateway_ray_throughput(url: str, calls: int) -> tuple[int, float]:
    from rlm_ray.llm import GatewayConfig
    from rlm_ray.llm.fanout import complete_many

    config = GatewayConfig(api_base=url, gateway_actors=2)
    complete_many([{"messages": _messages(-i)} for i in range(1, 41)], model=MODEL, config=config)
    started = time.perf_counter()
    results = complete_many([{"messages": _messages(i)} for i in range(calls)], model=MODEL, config=config)
    return _outcome_counts(results), time.perf_counter() - started


def render(rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=LABEL, show_lines=False)
    for column in ("scenario", "calls", "ok", "wall s", "calls/s", "limit", "achieved",
                   "utilisation (calls/wall)", "busiest window / limit", "sim 429s",
                   "sim max window", "note"):
        table.add_column(column, overflow="fold")
    for row in rows:
        windows = row.sim.get("windows", {})
        by_status = row.sim.get("by_status", {})
        window = (f"{windows.get('max_requests', '')} req / {windows.get('max_tokens', '')} tok"
                  if windows else "")
        table.add_row(row.name, str(row.calls), str(row.ok), f"{row.wall_s:.1f}",
                      f"{row.calls_per_s:.0f}", row.limit, row.achieved,
                      "" if row.utilisation is None else f"{row.utilisation:.3f}",
                      "" if row.window_share is None else f"{row.window_share:.3f}",
                      str(by_status.get(429, 0)) if row.sim.get("by_status") is not None else "",
                      window, row.note)
    Console(width=200).print(table)


def _ray_up() -> bool:
    import ray

    return ray.is_initialized()


def run_bench(args) -> int:
    rows: list[Row] = []
    phases = {
        "a": lambda: [rate_row("(a) gateway in-process (asyncio), RPM limiter", args.calls,
                               args.latency_ms, rpm=args.rpm)],
        "a-ray": lambda: [rate_row("(a) gateway via Ray: 2 gateway actors + limiter actor",
                                   args.calls, args.latency_ms, rpm=args.rpm, use_ray=True)],
        "b": lambda: [rate_row("(b) gateway in-process (asyncio), TPM limiter", args.calls,
                               args.latency_ms, tpm=args.tpm)],
        "c": lambda: overhead_rows(args.overhead_calls, args.concurrency),
        "d": lambda: [plain_row(args.calls, args.latency_ms, args.rpm, args.concurrency)],
    }
    started_ray = False
    if {"a-ray", "c"} & set(args.phases) and not args.no_ray:
        import ray

        from rlm_ray._ray import ensure_ray

        started_ray = not ray.is_initialized()
        ensure_ray(num_cpus=2) if not os.environ.get("RAY_ADDRESS") else ensure_ray()
    try:
        for name in args.phases:
            if name == "a-ray" and args.no_ray:
                continue
            print(f"... running {name}", flush=True)
            rows += phases[name]()
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    render(rows)
    return 0
