"""CLI of every `rlm-ray bench` suite: `quality` (the seeded suites), `compare`
(rlm-ray against the official `rlms` package on one simulator), and the
figures of each area: `corpus`, `engine`, `gateway`, `sim`, `batch` (`cost`
registers itself from rlm_ray.bench.cost). Handlers import their benchmark
module lazily so `--help` stays instant."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from rlm_ray.errors import UserError

_POWER = re.compile(r"^2\^(\d+)$")
# A notional price for the SIMULATOR (a small hosted model's list price), so
# $/query figures exist; real models are priced from litellm's table.
SIM_PRICE_PER_1M = (0.15, 0.60)


def register(commands, bench) -> None:
    from rlm_ray.batch.commands import add_model_arguments
    from rlm_ray.bench.suites import SUITES

    quality = bench.add_parser(
        "quality", help="accuracy, $/query, calls and wall time per corpus size (seeded suites)",
        description="Generate a seeded suite (answers computed, never typed in), ingest each "
                    "size as a corpus, answer it as a batch, score it, and write a table and "
                    "a plot. Suites: " + "; ".join(f"{s.name}: {s.description}" for s in SUITES.values()))
    quality.add_argument("--suite", required=True, choices=sorted(SUITES))
    quality.add_argument("--out", required=True, help="results folder (table, plot, batch runs)")
    quality.add_argument("--sizes", default=None,
                         help="comma-separated corpus sizes in tokens (e.g. 8192,2^20); "
                              "default: the suite's sizes")
    quality.add_argument("--max-size", default=None, help="drop default sizes above this")
    quality.add_argument("--seed", type=int, default=0)
    quality.add_argument("--concurrency", type=int, default=4, help="questions in flight")
    quality.add_argument("--workdir", default=".bench", help="cache of generated corpora")
    quality.add_argument("--price-per-1m", default=None,
                         help="IN,OUT USD per 1M tokens for the model (default for the "
                              f"SIMULATOR: notional {SIM_PRICE_PER_1M[0]},{SIM_PRICE_PER_1M[1]})")
    add_model_arguments(quality)
    quality.set_defaults(func=quality_command)

    from rlm_ray.bench.compare_cli import add_compare_parser

    add_compare_parser(bench)
    for add in (_add_corpus, _add_engine, _add_gateway, _add_sim, _add_batch):
        add(bench)

    from rlm_ray.bench import grid
    from rlm_ray.bench.paper.cli import add_paper_parser

    add_paper_parser(bench)
    grid.register(commands, bench)


def _check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")


def _add_corpus(bench) -> None:
    corpus = bench.add_parser(
        "corpus", help="ingest the CPython stdlib locally and to S3 (moto), time queries")
    corpus.add_argument("--stdlib", default=None, metavar="PATH",
                        help="the codebase to ingest (default: this interpreter's stdlib)")
    corpus.add_argument("--s3", action=argparse.BooleanOptionalAction, default=True,
                        help="also ingest to and query from a local moto S3 server (default on)")
    corpus.add_argument("--work", default=".bench/corpus", metavar="DIR",
                        help="scratch directory for the local corpus (rebuilt each run)")
    corpus.add_argument("--repeats", type=int, default=5, help="warm runs per query (median)")
    corpus.add_argument("--copies", type=int, default=10, metavar="N",
                        help="ingest scaling: also ingest N copies of the codebase (under distinct "
                             "prefixes) with 1 and --workers workers, and 1 copy; 0 skips (default 10)")
    corpus.add_argument("--workers", type=int, default=2, metavar="N",
                        help="Ray workers for the scaling runs (default 2)")
    corpus.set_defaults(func=_corpus)


def _corpus(args: argparse.Namespace) -> int:
    from rlm_ray.bench.corpus import run_bench

    return run_bench(stdlib=args.stdlib, use_s3=args.s3, work=args.work, repeats=args.repeats,
                     copies=args.copies, workers=args.workers)


def _add_engine(bench) -> None:
    engine = bench.add_parser(
        "engine", help="root-actor PSS at 10M vs 100M tokens; per-sub-call engine overhead")
    engine.add_argument("--work", default=".bench/engine", metavar="DIR",
                        help="where the 10M / 100M-token corpora are cached")
    engine.add_argument("--copies", type=int, default=10,
                        help="stdlib copies in the large corpus (default 10)")
    engine.add_argument("--sub-calls", type=int, default=400,
                        help="sub-calls for the overhead figure (default 400)")
    engine.add_argument("--skip-rss", action="store_true", help="only the overhead figure (skip the memory figure)")
    engine.add_argument("--iterate", action="store_true",
                        help="only: model code iterates every stdlib document from the REPL; "
                             "total vs context.stats, root actor and sandbox peak PSS growth")
    engine.set_defaults(func=_engine)


def _engine(args: argparse.Namespace) -> int:
    from rlm_ray.bench.engine import run_bench

    return run_bench(work=args.work, copies=args.copies, sub_calls=args.sub_calls,
                     skip_rss=args.skip_rss, iterate=args.iterate)


GATEWAY_PHASES = ("a", "a-ray", "b", "c", "d")


def _add_gateway(bench) -> None:
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
    parser.add_argument("--phases", default=",".join(GATEWAY_PHASES),
                        help=f"comma-separated subset of {','.join(GATEWAY_PHASES)}")
    parser.add_argument("--no-ray", action="store_true",
                        help="skip the Ray rows (no Ray instance is started or joined)")
    parser.add_argument("--quick", action="store_true",
                        help="a short dev run: 300 calls, 500 overhead calls")
    parser.set_defaults(func=_gateway)


def _gateway(args: argparse.Namespace) -> int:
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = sorted(set(args.phases) - set(GATEWAY_PHASES))
    if unknown:
        raise UserError(f"unknown phase(s) {', '.join(unknown)} (known: {', '.join(GATEWAY_PHASES)})")
    if args.quick:
        args.calls, args.overhead_calls = min(args.calls, 300), min(args.overhead_calls, 500)
    for name in ("calls", "rpm", "tpm", "overhead_calls", "concurrency"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if args.latency_ms < 0:
        raise UserError("--latency-ms must be >= 0")
    from rlm_ray.bench.gateway import run_bench

    return run_bench(args)


def _add_sim(bench) -> None:
    parser = bench.add_parser(
        "sim", help="throughput and concurrency of one simulator process",
        description="Start a simulator in a child process and measure requests/s at zero "
                    "latency and the concurrency reached under slow responses.")
    parser.add_argument("--requests", type=int, default=5000,
                        help="requests in the zero-latency throughput run")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="concurrent clients in the throughput run")
    parser.add_argument("--slow-requests", type=int, default=500,
                        help="concurrent requests in the slow run")
    parser.add_argument("--slow-latency-ms", type=float, default=500.0,
                        help="simulated latency of the slow run")
    parser.set_defaults(func=_sim)


def _sim(args: argparse.Namespace) -> int:
    from rlm_ray.bench.sim import run_bench

    for name in ("requests", "concurrency", "slow_requests"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    return run_bench(requests=args.requests, concurrency=args.concurrency,
                     slow_requests=args.slow_requests, slow_latency_ms=args.slow_latency_ms)


def _add_batch(bench) -> None:
    parser = bench.add_parser("batch", help="batch throughput, rate-limit utilisation and memory "
                                            "per question in flight (SIMULATOR)")
    parser.add_argument("--questions", type=int, default=None,
                        help="questions per concurrency level (default: 3 waves, 3 x concurrency)")
    parser.add_argument("--rpm", type=float, default=30000.0, help="the simulated provider's RPM")
    parser.add_argument("--latency-ms", type=float, default=3000.0,
                        help="simulated latency per call")
    parser.add_argument("--concurrency", default="8,128",
                        help="comma-separated questions in flight, one batch per level")
    parser.add_argument("--source", default=None, help="codebase to ingest (default: the stdlib)")
    parser.add_argument("--workdir", default=".bench/batch", help="where corpus and results go")
    parser.set_defaults(func=_batch)


def _batch(args: argparse.Namespace) -> int:
    from rlm_ray.bench.batch import run_bench

    try:
        levels = [int(x) for x in str(args.concurrency).split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--concurrency must be integers separated by commas, "
                        f"got {args.concurrency!r}") from None
    if not levels or min(levels) < 1:
        raise UserError(f"--concurrency levels must be >= 1, got {args.concurrency!r}")
    _check_positive(args, "questions", "rpm")
    return run_bench(questions=args.questions, rpm=args.rpm, latency_ms=args.latency_ms,
                     concurrency=levels, source=args.source, workdir=args.workdir)


def parse_size(text: str) -> int:
    text = text.strip().replace("_", "").replace(",", "")
    match = _POWER.match(text)
    try:
        value = 2 ** int(match.group(1)) if match else int(text)
    except ValueError:
        raise UserError(f"not a size in tokens: {text!r} (use e.g. 8192 or 2^13)") from None
    if value < 1024:
        raise UserError(f"sizes must be at least 1024 tokens, got {value}")
    return value


def choose_sizes(suite_sizes: tuple[int, ...], sizes: str | None, max_size: str | None) -> list[int]:
    chosen = [parse_size(s) for s in sizes.split(",") if s.strip()] if sizes else list(suite_sizes)
    if max_size:
        limit = parse_size(max_size)
        chosen = [s for s in chosen if s <= limit]
    if not chosen:
        raise UserError("no sizes left to run (check --sizes / --max-size)")
    return sorted(set(chosen))


def _prices(text: str | None, model: str, simulated: bool) -> dict | None:
    if text is None and not simulated:
        return None
    try:
        pin, pout = (float(x) for x in text.split(",")) if text else SIM_PRICE_PER_1M
    except ValueError:
        raise UserError(f"--price-per-1m wants IN,OUT (two numbers), got {text!r}") from None
    return {model: {"input_per_1m": pin, "output_per_1m": pout}}


def quality_command(args: argparse.Namespace) -> int:
    from rlm_ray.batch.commands import rlm_settings
    from rlm_ray.bench.quality import run_quality
    from rlm_ray.bench.report import markdown_table, plot, write_table
    from rlm_ray.bench.suites import SUITES

    if args.concurrency < 1:
        raise UserError("--concurrency must be at least 1")
    sizes = choose_sizes(SUITES[args.suite].default_sizes, args.sizes, args.max_size)
    out = Path(args.out)
    if args.cache is None:
        args.cache = "off"   # a benchmark pays for every call it reports
    rlm, server = rlm_settings(args, str(out))
    simulated = server is not None or "sim/" in rlm["model"]
    prices = _prices(args.price_per_1m, rlm["model"], simulated)
    if rlm.get("sub_model") and prices:
        prices[rlm["sub_model"]] = prices[rlm["model"]]
    if prices:
        rlm["gateway"] = rlm["gateway"].with_(prices=prices)
    try:
        results = run_quality(args.suite, sizes, seed=args.seed, out=out, rlm=rlm,
                              concurrency=args.concurrency, workdir=Path(args.workdir),
                              log=lambda line: print(line, file=sys.stderr, flush=True))
    finally:
        if server is not None:
            server.stop()
    label = " (SIMULATOR, notional prices)" if simulated else ""
    title = f"{args.suite}: {rlm['model']}{label}, seed {args.seed}"
    write_table(results, out / "summary.md", title)
    plot(results, out / f"{args.suite}.png", title)
    print(f"## {title}\n")
    print(markdown_table(results))
    print(f"table: {out / 'summary.md'}  plot: {out / (args.suite + '.png')}")
    return 0
