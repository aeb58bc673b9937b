"""CLI of the gateway: `rlm-ray bench gateway`."""
from __future__ import annotations

import argparse

from rlm_ray.errors import UserError

PHASES = ("a", "a-ray", "b", "c", "d")


def register(commands, bench) -> None:
    parser = bench.add_parser(
        "gateway", help="model gateway: limiter utilisation, overhead, vs plain litellm",
        description="Run the gateway against the provider SIMULATOR (child processes) and "
                    "print utilisation of RPM/TPM limits, per-call overhead and throughput, "
                    "and plain litellm for comparison. (a) takes >= calls/rpm minutes.")
    parser.add_argument("--calls", type=int, default=2000, help="calls per rate-limited run")
    parser.add_argument("--rpm", type=float, default=1200, help="requests/min limit (a, d)")
    parser.add_argument("--tpm", type=float, default=50_000, help="tokens/min limit (b)")
    parser.add_argument("--latency-ms", type=float, default=200, help="simulated latency (a, b, d)")
    parser.add_argument("--overhead-calls", type=int, default=2000, help="calls in the overhead run (c)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="in-flight calls for (c) and the Semaphore of (d)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--no-ray", action="store_true",
                        help="skip the Ray rows (no Ray instance is started or joined)")
    parser.add_argument("--quick", action="store_true",
                        help="a short dev run: 300 calls, 500 overhead calls")
    parser.set_defaults(func=bench_gateway)


def bench_gateway(args: argparse.Namespace) -> int:
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = sorted(set(args.phases) - set(PHASES))
    if unknown:
        raise UserError(f"unknown phase(s) {', '.join(unknown)} (known: {', '.join(PHASES)})")
    if args.quick:
        args.calls, args.overhead_calls = min(args.calls, 300), min(args.overhead_calls, 500)
    for name in ("calls", "rpm", "tpm", "overhead_calls", "concurrency"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if args.latency_ms < 0:
        raise UserError("--latency-ms must be >= 0")
    from rlm_ray.llm.bench import run_bench

    return run_bench(args)
