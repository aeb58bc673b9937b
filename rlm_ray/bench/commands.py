"""CLI: `rlm-ray bench quality` (the seeded suites) and `rlm-ray bench compare`
(rlm-ray against the official `rlms` package on one simulator)."""
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

    from rlm_ray.bench import grid

    grid.register(commands, bench)


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
