"""`python -m sandbox.bench`: what a sandbox costs to start and to use, in each
mode: bubblewrap with the worker forked from the template (the default),
bubblewrap starting a new interpreter (`SANDBOX_FORK=0`), and no bubblewrap.
Prints figures; asserts nothing.

For each mode: start-up wall time and CPU (user+system of EVERY process
involved: this host, its template's forks, bubblewrap's two processes and the worker, read from
/proc before the sandbox is closed, so load on the machine does not inflate
it much), the host's CPU to close it, the processes one sandbox keeps alive,
and the wall and CPU of a trivial run and of one host-call round trip.

Targets: start <= 250 ms wall, run <= 1 ms, host call <= 1 ms.
Without bwrap is the same as `SANDBOX_BWRAP=0` or `Sandbox(use_bwrap=False)`.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from dataclasses import dataclass

from sandbox import fork_server
from sandbox.host import Sandbox

TARGETS_MS = {"start": 250.0, "run": 1.0, "host call": 1.0}


@dataclass
class Figures:
    mode: str
    isolation: dict[str, bool]
    processes: int               # alive per sandbox, bubblewrap's included
    start_ms: list[float]
    start_cpu_ms: list[float]    # host + every sandbox process, per start-up
    start_host_cpu_ms: float     # of which this host process (mean)
    close_cpu_ms: float          # this host closing it: kill, reap, remove the cgroup (mean)
    run_ms: list[float]
    run_cpu_ms: float            # host + worker CPU per trivial run (mean)
    call_ms: list[float]
    call_cpu_ms: float           # host + worker CPU per host call (mean)


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def _host_cpu_s() -> float:
    """This process (all threads) and its sandbox template's own work (the forks)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime + fork_server.templates_cpu_s()


def sandbox_cpu_s(sb: Sandbox) -> float:
    """CPU spent so far by the sandbox's processes and the children they reaped."""
    worker = sb._worker
    return 0.0 if worker is None else worker.cpu_s()


def sandbox_processes(sb: Sandbox) -> int:
    return len(sb._worker.processes()) if sb._worker is not None else 0


MODES = {"forked": (True, "1"), "bwrap": (True, "0"), "no bwrap": (False, "0")}


def measure(mode: str, starts: int, runs: int, calls: int) -> Figures:
    use_bwrap, fork = MODES[mode]
    before = os.environ.get(fork_server.FORK_ENV_SWITCH)
    os.environ[fork_server.FORK_ENV_SWITCH] = fork
    try:
        return _measure(mode, use_bwrap, starts, runs, calls)
    finally:
        if before is None:
            os.environ.pop(fork_server.FORK_ENV_SWITCH)
        else:
            os.environ[fork_server.FORK_ENV_SWITCH] = before


def _measure(mode: str, use_bwrap: bool, starts: int, runs: int, calls: int) -> Figures:
    # Warm the page cache, the bwrap probe and (forked) the template, whose own
    # start is paid once per host process.
    Sandbox(use_bwrap=use_bwrap).close()
    start_ms, start_cpu_ms, host_cpu_ms, close_cpu_ms, processes = [], [], [], [], 0
    for _ in range(starts):
        host_before, began = _host_cpu_s(), time.perf_counter()
        sb = Sandbox(use_bwrap=use_bwrap)
        start_ms.append(_ms(time.perf_counter() - began))
        host_cpu_ms.append(_ms(_host_cpu_s() - host_before))
        start_cpu_ms.append(host_cpu_ms[-1] + _ms(sandbox_cpu_s(sb)))
        processes = sandbox_processes(sb)
        host_before = _host_cpu_s()
        sb.close()
        close_cpu_ms.append(_ms(_host_cpu_s() - host_before))
    with Sandbox({"f": lambda: 1}, use_bwrap=use_bwrap) as sb:
        isolation = sb.isolation
        for _ in range(50):
            sb.run("x = 1")
        run_ms = []
        cpu_before = _host_cpu_s() + sandbox_cpu_s(sb)
        for _ in range(runs):
            began = time.perf_counter()
            sb.run("x = 1")
            run_ms.append(_ms(time.perf_counter() - began))
        run_cpu_ms = _ms(_host_cpu_s() + sandbox_cpu_s(sb) - cpu_before) / runs
        # Per call: a run making `calls` host calls, minus a trivial run, over `calls`.
        call_ms, rounds = [], 5
        cpu_before = _host_cpu_s() + sandbox_cpu_s(sb)
        for _ in range(rounds):
            began = time.perf_counter()
            result = sb.run(f"for _ in range({calls}): f()")
            assert result.error is None, result.error
            call_ms.append((_ms(time.perf_counter() - began) - statistics.median(run_ms)) / calls)
        spent = _ms(_host_cpu_s() + sandbox_cpu_s(sb) - cpu_before)
        call_cpu_ms = (spent - rounds * run_cpu_ms) / (rounds * calls)
    return Figures(mode, isolation, processes, start_ms,
                   start_cpu_ms, statistics.mean(host_cpu_ms), statistics.mean(close_cpu_ms),
                   run_ms, run_cpu_ms,
                   call_ms, call_cpu_ms)


def render(figures: list[Figures]) -> str:
    header = (f"{'mode':<10} {'metric':<22} {'median ms':>10} {'p95 ms':>10} {'CPU ms':>9} "
              f"{'target ms':>10}  ok")
    lines = [header, "-" * len(header)]
    for f in figures:
        rows = [("start", "worker start-up", f.start_ms, statistics.mean(f.start_cpu_ms)),
                ("run", "trivial run", f.run_ms, f.run_cpu_ms),
                ("host call", "host-call round trip", f.call_ms, f.call_cpu_ms)]
        for key, label, values, cpu in rows:
            median, p95 = statistics.median(values), _p(values, 0.95)
            ok = "yes" if median <= TARGETS_MS[key] else "NO"
            lines.append(f"{f.mode:<10} {label:<22} {median:>10.3f} {p95:>10.3f} {cpu:>9.3f} "
                         f"{TARGETS_MS[key]:>10.1f}  {ok}")
    lines.append("")
    for f in figures:
        lines.append(f"{f.mode}: start-up CPU {statistics.mean(f.start_cpu_ms):.1f} ms "
                     f"(host {f.start_host_cpu_ms:.1f} ms, sandbox processes "
                     f"{statistics.mean(f.start_cpu_ms) - f.start_host_cpu_ms:.1f} ms); "
                     f"close CPU (host) {f.close_cpu_ms:.1f} ms; "
                     f"{f.processes} processes per sandbox")
    for f in figures:
        lines.append(f"isolation ({f.mode}): {f.isolation}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=20, help="worker start-ups to time")
    parser.add_argument("--runs", type=int, default=1000, help="trivial runs to time")
    parser.add_argument("--calls", type=int, default=1000, help="host calls per timed run")
    args = parser.parse_args(argv)
    figures = [measure(mode, args.starts, args.runs, args.calls) for mode in MODES]
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"sandbox bench: {args.starts} start-ups, {args.runs} trivial runs, "
          f"{args.calls} host calls x 5 per mode; load average {load} on "
          f"{os.cpu_count()} CPUs (wall-clock figures grow with load, CPU figures far less)")
    print(render(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
