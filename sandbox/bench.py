"""`python -m sandbox.bench`: worker start-up, trivial-run latency and host-call
round trip, with and without bubblewrap. Prints figures; asserts nothing.

Targets (issue #3): start <= 250 ms, run <= 1 ms, host call <= 1 ms.
Without bwrap is the same as `SANDBOX_BWRAP=0` or `Sandbox(use_bwrap=False)`.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from dataclasses import dataclass

from sandbox.host import Sandbox

TARGETS_MS = {"start": 250.0, "run": 1.0, "host call": 1.0}


@dataclass
class Figures:
    mode: str
    isolation: dict[str, bool]
    start_ms: list[float]
    start_cpu_ms: float | None   # worker CPU (user+sys) per start-up: load-independent
    run_ms: list[float]
    call_ms: list[float]


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def measure(use_bwrap: bool, starts: int, runs: int, calls: int) -> Figures:
    Sandbox(use_bwrap=use_bwrap).close()  # warm the page cache and the bwrap probe
    start_ms = []
    cpu_before = _children_cpu_s()
    for _ in range(starts):
        began = time.perf_counter()
        sb = Sandbox(use_bwrap=use_bwrap)
        start_ms.append(_ms(time.perf_counter() - began))
        sb.close()  # reaps the worker, so its CPU time lands in RUSAGE_CHILDREN
    # Under bwrap the worker is a grandchild in another pid namespace and its
    # CPU time never reaches our RUSAGE_CHILDREN, so only the direct figure is real.
    start_cpu_ms = None if use_bwrap else _ms(_children_cpu_s() - cpu_before) / starts
    with Sandbox({"f": lambda: 1}, use_bwrap=use_bwrap) as sb:
        isolation = sb.isolation
        for _ in range(50):
            sb.run("x = 1")
        run_ms = []
        for _ in range(runs):
            began = time.perf_counter()
            sb.run("x = 1")
            run_ms.append(_ms(time.perf_counter() - began))
        # Per call: a run making `calls` host calls, minus a trivial run, over `calls`.
        call_ms = []
        for _ in range(5):
            began = time.perf_counter()
            result = sb.run(f"for _ in range({calls}): f()")
            assert result.error is None, result.error
            call_ms.append((_ms(time.perf_counter() - began) - statistics.median(run_ms)) / calls)
    return Figures("bwrap" if use_bwrap else "no bwrap", isolation, start_ms, start_cpu_ms,
                   run_ms, call_ms)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def render(figures: list[Figures]) -> str:
    header = f"{'mode':<10} {'metric':<22} {'median ms':>10} {'p95 ms':>10} {'target ms':>10}  ok"
    lines = [header, "-" * len(header)]
    for f in figures:
        rows = [("start", "worker start-up", f.start_ms), ("run", "trivial run", f.run_ms),
                ("host call", "host-call round trip", f.call_ms)]
        for key, label, values in rows:
            median, p95 = statistics.median(values), _p(values, 0.95)
            ok = "yes" if median <= TARGETS_MS[key] else "NO"
            lines.append(f"{f.mode:<10} {label:<22} {median:>10.3f} {p95:>10.3f} "
                         f"{TARGETS_MS[key]:>10.1f}  {ok}")
        cpu = "n/a" if f.start_cpu_ms is None else f"{f.start_cpu_ms:.3f}"
        lines.append(f"{f.mode:<10} {'start-up CPU (mean)':<22} {cpu:>10} {'':>10} {'':>10}  -")
    lines.append("")
    for f in figures:
        lines.append(f"isolation ({f.mode}): {f.isolation}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=10, help="worker start-ups to time")
    parser.add_argument("--runs", type=int, default=1000, help="trivial runs to time")
    parser.add_argument("--calls", type=int, default=1000, help="host calls per timed run")
    args = parser.parse_args(argv)
    figures = [measure(use_bwrap, args.starts, args.runs, args.calls)
               for use_bwrap in (True, False)]
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"sandbox bench: {args.starts} start-ups, {args.runs} trivial runs, "
          f"{args.calls} host calls x 5 per mode; load average {load} on "
          f"{os.cpu_count()} CPUs (wall-clock figures grow with load)")
    print(render(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
