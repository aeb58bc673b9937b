"""`rlm-ray bench compare`: argument parsing, the order of the runs, and the
printed table (the measuring itself is in compare.py)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from rlm_ray.errors import UserError
from rlm_ray.llm.config import PACING_MODES


def add_compare_parser(bench) -> None:
    p = bench.add_parser(
        "compare", help="rlm-ray vs the official rlms package on one SIMULATOR (wall, req/min)",
        description="Run the same scripted workloads (a fan-out of one question over N chunks, "
                    "and a batch of questions) with rlm-ray and with the official `rlms` package "
                    "(installed into a separate venv by this command), both against one "
                    "simulator process with the same latency and RPM/TPM limits. Falls back to "
                    "a plain asyncio + litellm loop, saying why, when rlms is unavailable.")
    p.add_argument("--chunks", type=int, default=512, help="fan-out sub-calls (pieces of the context)")
    p.add_argument("--questions", type=int, default=50, help="questions in the batch workload")
    p.add_argument("--batch-chunks", type=int, default=4, help="pieces per batch question")
    p.add_argument("--latency-ms", type=float, default=1000.0, help="simulated latency per call")
    # Defaults: a high provider tier (30k RPM), so the quota does not decide the race and
    # the engines are what is compared; a lower --rpm shows the quota-bound regime.
    p.add_argument("--rpm", type=float, default=30_000.0, help="requests/min, simulator and clients")
    p.add_argument("--tpm", type=float, default=200_000_000.0, help="tokens/min, simulator and clients")
    p.add_argument("--pacing", choices=PACING_MODES, default="burst",
                   help="how rlm-ray's gateway spends the limits (the simulator counts over a "
                        "sliding window, which burst pacing is made for; even is the gateway's "
                        "default for providers that count over shorter intervals)")
    p.add_argument("--concurrency", type=int, default=10, help="rlm-ray batch actors")
    p.add_argument("--baseline-concurrency", type=int, default=16,
                   help="in-flight calls of the asyncio+litellm loop (rlms batches 16 at a time)")
    p.add_argument("--rlms-venv", default=".bench/rlms-venv", help="where rlms is installed")
    p.add_argument("--skip-batch", action="store_true", help="fan-out only")
    p.add_argument("--no-rlms", action="store_true",
                   help="do not install/run rlms: compare with the asyncio+litellm loop only")
    p.add_argument("--out", default=".bench/compare", help="folder for compare.json / compare.md")
    p.set_defaults(func=compare_command)


def _table(phases) -> str:
    head = ("task", "system", "wall s", "latency floor s", "wall / floor", "requests", "req/min",
            "failed calls", "429s", "max concurrency", "correct", "notes")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ph in phases:
        floor = "" if not ph.floor_s else f"{ph.floor_s:.1f}"
        ratio = "" if not ph.floor_s else f"{ph.wall_s / ph.floor_s:.2f}"
        lines.append("| " + " | ".join([ph.task, ph.system, f"{ph.wall_s:.1f}", floor, ratio,
                                         str(ph.requests),
                                         f"{ph.requests_per_min:.0f}", str(ph.failed_calls),
                                         str(ph.rejected_429), str(ph.max_concurrency),
                                         f"{ph.correct:.2f}", ph.notes]) + " |")
    return "\n".join(lines) + "\n"


def _ratios(phases) -> list[str]:
    out = [f"{p.task}: {p.system} {p.wall_s:.1f}s = {p.wall_s / p.floor_s:.2f}x its latency floor "
           f"of {p.floor_s:.1f}s ({p.notes.split('floor = ', 1)[-1]})"
           for p in phases if p.floor_s]
    for task in ("fan-out", "batch"):
        ours = next((p for p in phases if p.task == task and p.system == "rlm-ray"), None)
        for other in (p for p in phases if p.task == task and p.system != "rlm-ray"):
            if ours and not ours.completed:
                out.append(f"{task}: no ratio: the rlm-ray run did not complete ({ours.notes})")
            elif ours and ours.wall_s:
                line = (f"{task}: rlm-ray {other.wall_s / ours.wall_s:.1f}x faster wall time "
                        f"than {other.system} ({other.wall_s:.1f}s vs {ours.wall_s:.1f}s), "
                        f"{ours.requests_per_min / max(other.requests_per_min, 1e-9):.1f}x the "
                        "requests/min")
                if other.correct < 1 or other.failed_calls or not other.completed:
                    # A run that failed is not a like-for-like finish: say so next to the ratio.
                    line += (f" -- NOT like for like: {other.system} scored {other.correct:.2f} "
                             f"with {other.failed_calls} failed calls")
                out.append(line)
    for p in phases:
        if p.cpu_s:
            split = "; ".join(f"{kind} {s:.1f}" for kind, s in p.cpu_s.items())
            out.append(f"{p.task}: {p.system} CPU-s over the question, on {os.cpu_count()} cores "
                       f"(the sandbox not included): {split}")
    return out


def compare_command(args: argparse.Namespace) -> int:
    from rlm_ray._ray import ensure_ray
    from rlm_ray.bench import compare as cmp
    from rlm_ray.bench import compare_workloads as workloads

    for name in ("chunks", "questions", "batch_chunks", "concurrency", "baseline_concurrency"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.latency_ms < 0 or args.rpm <= 0 or args.tpm <= 0:
        raise UserError("--latency-ms must be >= 0, --rpm and --tpm > 0")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    out = Path(args.out)
    limits = cmp.Limits(args.latency_ms, args.rpm, args.tpm, pacing=args.pacing)
    log(f"workloads: fan-out over {args.chunks} chunks"
        + ("" if args.skip_batch else f"; batch of {args.questions} questions"))
    fan = workloads.fanout(args.chunks)
    batch = None if args.skip_batch else workloads.batch(args.questions, args.batch_chunks)
    python, why = (None, "skipped (--no-rlms)") if args.no_rlms else \
        cmp.ensure_rlms(Path(args.rlms_venv), log)
    log(f"rlms: {why}")
    phases = []
    ensure_ray()
    with cmp.Simulator(limits) as sim:
        log(f"SIMULATOR (not a real provider) at {sim.base_url}: latency {args.latency_ms} ms, "
            f"rpm {args.rpm:g}, tpm {args.tpm:g}; rlm-ray's gateway gets the same limits, "
            f"{args.pacing} pacing")
        log("fan-out: rlm-ray ...")
        phases.append(cmp.rlm_ray_fanout(sim, limits, fan))
        if python is not None:
            log("fan-out: rlms ...")
            try:
                phases.append(cmp.rlms_phase(python, sim, limits, fan, "fan-out"))
            except RuntimeError as exc:
                python, why = None, str(exc)
                log(f"rlms could not run: {why}")
        log("fan-out: asyncio + litellm loop ...")
        phases.append(cmp.plain_fanout(sim, limits, fan, args.baseline_concurrency))
        if batch is not None:
            log("batch: rlm-ray ...")
            phases.append(cmp.rlm_ray_batch(sim, limits, batch, out,
                                            min(args.concurrency, args.questions)))
            if python is not None:
                log("batch: rlms ...")
                phases.append(cmp.rlms_phase(python, sim, limits, batch, "batch"))
    table, ratios = _table(phases), _ratios(phases)
    header = (f"SIMULATOR latency {args.latency_ms:g} ms, rpm {args.rpm:g}, tpm {args.tpm:g}; "
              f"rlm-ray {args.pacing} pacing; "
              f"fan-out {fan.pieces} chunks; rlms: {why}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps({"header": header, "phases": [
        {**asdict(p), "requests_per_min": p.requests_per_min} for p in phases], "ratios": ratios}, indent=2))
    (out / "compare.md").write_text(f"{header}\n\n{table}\n" + "\n".join(ratios) + "\n")
    print(header + "\n")
    print(table)
    print("\n".join(ratios))
    return 0
