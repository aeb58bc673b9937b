"""CLI: `rlm-ray sim` (serve the SIMULATOR until SIGTERM/SIGINT)."""
from __future__ import annotations

import argparse

from rlm_ray.errors import UserError


def register(commands, bench) -> None:
    parser = commands.add_parser(
        "sim", help="run the OpenAI-compatible provider SIMULATOR (not a real model)",
        description="Serve the rlm-ray provider SIMULATOR: OpenAI-compatible "
                    "/v1/chat/completions and /v1/models with scripted policies, latency, "
                    "RPM/TPM limits and injected faults; GET /stats for counters.")
    add_sim_arguments(parser)
    parser.set_defaults(func=serve_command)


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0 = any free port)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="base latency per call")
    parser.add_argument("--per-token-ms", type=float, default=0.0,
                        help="extra latency per completion token")
    parser.add_argument("--jitter", type=float, default=0.0,
                        help="latency jitter fraction in [0, 1] (seeded)")
    parser.add_argument("--rpm", type=float, default=None, help="requests per window")
    parser.add_argument("--tpm", type=float, default=None, help="tokens per window")
    parser.add_argument("--window-s", type=float, default=60.0,
                        help="rate-limit sliding window in seconds")
    parser.add_argument("--fail-rate", type=float, default=0.0,
                        help="probability of an injected fault per admitted call")
    parser.add_argument("--faults", default=None,
                        help="comma-separated fault kinds (default: 500,503,hang,malformed,truncated)")
    parser.add_argument("--fail-first-n", type=int, default=0,
                        help="the first N admitted calls fault (cycling --faults)")
    parser.add_argument("--hang-s", type=float, default=30.0, help="how long a 'hang' lasts")
    parser.add_argument("--context-window", type=int, default=128_000,
                        help="tokens; longer requests get 400 context_length_exceeded")
    parser.add_argument("--model-window", action="append", default=[], metavar="MODEL=TOKENS",
                        help="the window of one served model (e.g. sim/explorer=32000), over "
                             "--context-window; repeatable")
    parser.add_argument("--seed", type=int, default=0, help="seed for jitter and fault draws")
    parser.add_argument("--replay", default=None, metavar="FILE",
                        help="serve the recorded conversations of this replay file as the "
                             "model sim/replay (format: docs/architecture.md)")
    parser.add_argument("--bill-like", action="append", default=[], metavar="MODEL=ENTRY",
                        help="report prompt caching for served MODEL like the provider of "
                             "litellm price entry ENTRY (gpt-5-mini: automatic prefix caching; "
                             "claude-sonnet-4-5: cache_control breakpoints); repeatable")
    parser.add_argument("--cache-replicas", type=int, default=4,
                        help="automatic caching: replicas that requests without a "
                             "prompt_cache_key are spread over (each with its own cache)")


def knobs_from_args(args: argparse.Namespace) -> dict:
    from rlm_ray.sim.config import FAULT_KINDS

    faults = FAULT_KINDS if args.faults is None else tuple(
        kind.strip() for kind in args.faults.split(",") if kind.strip())
    return {"latency_ms": args.latency_ms, "per_token_ms": args.per_token_ms,
            "jitter": args.jitter, "rpm": args.rpm, "tpm": args.tpm, "window_s": args.window_s,
            "fail_rate": args.fail_rate, "faults": faults, "fail_first_n": args.fail_first_n,
            "hang_s": args.hang_s, "context_window": args.context_window, "seed": args.seed,
            "bill_like": _bill_like(args.bill_like), "cache_replicas": args.cache_replicas,
            "model_windows": _model_windows(args.model_window)}


def _model_windows(items: list[str]) -> dict[str, int]:
    windows = {}
    for item in items:
        model, sep, tokens = item.partition("=")
        if not (model and sep and tokens.strip().isdigit()):
            raise UserError(f"--model-window takes MODEL=TOKENS (e.g. sim/explorer=32000), "
                            f"got {item!r}")
        windows[model] = int(tokens)
    return windows


def _bill_like(items: list[str]) -> dict[str, str]:
    pairs = [item.partition("=") for item in items]
    bad = [item for item, (model, sep, entry) in zip(items, pairs) if not (model and sep and entry)]
    if bad:
        raise UserError(f"--bill-like takes MODEL=ENTRY (e.g. sim/rlm-policy=gpt-5-mini), got {bad[0]!r}")
    return {model: entry for model, _, entry in pairs}


def serve_command(args: argparse.Namespace) -> int:
    import signal
    import threading

    from rlm_ray.sim.replay import Replay
    from rlm_ray.sim.server import SimServer

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    replay = Replay.load(args.replay) if getattr(args, "replay", None) else None
    server = SimServer(args.host, args.port, replay=replay, **knobs_from_args(args)).start()
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    print(f"SIMULATOR listening on {server.base_url} (not a real model provider)", flush=True)
    print(f"models: {', '.join(server.simulator.model_names())}; counters at {server.url}/stats",
          flush=True)
    if replay is not None:
        print(f"replaying {len(replay.recordings)} recorded conversation(s) from {args.replay} "
              "as sim/replay", flush=True)
    windows = ", ".join(f"{m}={w}" for m, w in server.config.model_windows)
    print(f"input windows: {windows + ', ' if windows else ''}others "
          f"{server.config.context_window} tokens", flush=True)
    try:
        while not stopping.wait(0.5):  # wake periodically so signals are handled promptly
            pass
    finally:
        server.stop()
    print("SIMULATOR stopped", flush=True)
    return 0

