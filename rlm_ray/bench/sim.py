"""`rlm-ray bench sim`: load one simulator process the way the gateway and the
engine will, and print what it sustains. The simulator runs in a child process
so the client's event loop does not share its interpreter (2 cores here)."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

from rlm_ray.sim.server import fetch_stats

MESSAGES = [{"role": "user", "content": "Reply with this sentence, exactly as written."}]


@dataclass
class LoadResult:
    requests: int
    ok: int
    wall_s: float
    max_concurrency: int

    @property
    def per_second(self) -> float:
        return self.requests / self.wall_s if self.wall_s else 0.0


@contextmanager
def sim_process(*flags: str):
    """A `python -m rlm_ray.sim` child; yields its base URL, stops it after."""
    proc = subprocess.Popen([sys.executable, "-m", "rlm_ray.sim", "--port", "0", *flags],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if "SIMULATOR listening on " not in line:
            raise RuntimeError(f"simulator did not start: {line!r}")
        yield line.split("listening on ", 1)[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _load(base_url: str, requests: int, concurrency: int) -> LoadResult:
    import aiohttp

    body = json.dumps({"model": "sim/echo", "messages": MESSAGES}).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sim-bench"}
    remaining, ok = iter(range(requests)), 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        for _ in remaining:  # workers share one iterator: exactly `requests` calls
            async with session.post(base_url + "/chat/completions", data=body,
                                    headers=headers) as response:
                await response.read()
                ok += response.status == 200

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return LoadResult(requests, ok, wall, fetch_stats(base_url)["max_concurrency"])


def run_bench(requests: int, concurrency: int, slow_requests: int,
              slow_latency_ms: float) -> int:
    rows = []
    with sim_process() as url:
        asyncio.run(_load(url, min(200, requests), concurrency))  # warm-up: connections, imports
        fast = asyncio.run(_load(url, requests, concurrency))
        rows.append((f"throughput, 0 ms latency, {concurrency} clients", fast))
    with sim_process("--latency-ms", str(slow_latency_ms)) as url:
        slow = asyncio.run(_load(url, slow_requests, slow_requests))
        rows.append((f"{slow_requests} concurrent, {slow_latency_ms:g} ms latency", slow))

    print("rlm-ray provider SIMULATOR load test (simulator in a child process, "
          "aiohttp clients, sim/echo)")
    print(f"{'run':<42} {'requests':>8} {'ok':>6} {'wall s':>8} {'req/s':>8} {'max conc':>9}")
    for name, r in rows:
        print(f"{name:<42} {r.requests:>8} {r.ok:>6} {r.wall_s:>8.2f} {r.per_second:>8.0f} "
              f"{r.max_concurrency:>9}")
    ideal = slow_latency_ms / 1000.0
    print(f"slow run: wall / one-call latency = {slow.wall_s / ideal:.2f} "
          f"(1.00 = all {slow_requests} overlapped perfectly)")
    return 0 if fast.ok == fast.requests and slow.ok == slow.requests else 1
