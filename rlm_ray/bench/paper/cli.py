"""CLI: `rlm-ray bench paper` (registered by rlm_ray.bench.commands)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlm_ray.errors import UserError

SIM_PRICE_PER_1M = {"input_per_1m": 0.15, "output_per_1m": 0.60}
DATASET_NAMES = ("oolong", "oolong-pairs", "browsecomp-plus", "longbench-codeqa", "sniah")


def add_paper_parser(bench) -> None:
    from rlm_ray.batch.commands import add_model_arguments
    from rlm_ray.bench.paper.methods import METHODS

    paper = bench.add_parser(
        "paper", help="the RLM paper's Table 1 benchmarks from the published files",
        description="Load a benchmark as its publisher ships it, answer it with the chosen "
                    "method through the batch layer (or one direct call for `base`), score it "
                    "with the benchmark's own rule and print a Table-1-style row beside the "
                    "paper's published one.")
    paper.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    paper.add_argument("--data", action="append", default=[], metavar="PATH",
                       help="the downloaded files or folder (repeat for several: OOLONG-Pairs "
                            "also needs the oolong-synth shard; BrowseComp-Plus its corpus)")
    paper.add_argument("--limit", type=int, default=None, help="questions to sample")
    paper.add_argument("--seed", type=int, default=0, help="sampling seed")
    paper.add_argument("--method", default="rlm", choices=sorted(METHODS))
    paper.add_argument("--out", default=None,
                       help="results folder (default bench-paper/DATASET-METHOD)")
    paper.add_argument("--dry-run", action="store_true",
                       help="print the cost estimate; call no model")
    paper.add_argument("--judge-model", default=None,
                       help="BrowseComp-Plus grader model (default: contains-match fallback)")
    paper.add_argument("--context-len", type=int, default=None,
                       help="window length in tokens (OOLONG 131072, OOLONG-Pairs 32768, "
                            "S-NIAH 8192 by default)")
    paper.add_argument("--docs-per-query", type=int, default=1000,
                       help="BrowseComp-Plus documents per query (the paper's 1,000)")
    paper.add_argument("--concurrency", type=int, default=4, help="questions in flight")
    add_model_arguments(paper)
    paper.set_defaults(func=paper_command)


def paper_command(args: argparse.Namespace) -> int:
    from rlm_ray.batch.commands import rlm_settings
    from rlm_ray.bench.paper.registry import LoadOptions, datasets
    from rlm_ray.bench.paper.tasks import data_files

    for name in ("limit", "context_len", "docs_per_query", "concurrency"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    ds = datasets()[args.dataset]
    if args.judge_model and not ds.judged:
        raise UserError(f"--judge-model grades BrowseComp-Plus only; {ds.name} has its own "
                        "exact rule")
    if ds.needs_data and not args.data:
        raise UserError(f"--dataset {ds.name} needs --data (the files of {ds.source})")
    files = data_files(args.data) if args.data else []
    tasks = ds.load(files, LoadOptions(limit=args.limit, seed=args.seed,
                                       context_len=args.context_len,
                                       docs_per_query=args.docs_per_query))
    out = Path(args.out or f"bench-paper/{ds.name}-{args.method}")
    rlm, server = rlm_settings(args, str(out))
    simulated = server is not None or "sim/" in rlm["model"]
    if args.judge_model:
        from rlm_ray.sim import resolve_model

        # `sim` as a judge is the same simulator; any other model string passes through.
        args.judge_model = resolve_model(args.judge_model, rlm["api_base"] or "unused")[0]
    if simulated:
        # Notional prices (a small hosted model's list price) so $/query exists at all.
        prices = {m: dict(SIM_PRICE_PER_1M) for m in {rlm["model"], rlm.get("sub_model")} if m}
        rlm["gateway"] = rlm["gateway"].with_(prices={**prices, **(rlm["gateway"].prices or {})})
    try:
        return _execute(args, ds, tasks, out, rlm, simulated)
    finally:
        if server is not None:
            server.stop()


def _execute(args, ds, tasks, out: Path, rlm: dict, simulated: bool) -> int:
    from rlm_ray.batch.plan import format_plan
    from rlm_ray.bench.paper.run import dry_run, run_method
    from rlm_ray.bench.paper.table import SIMULATOR_BANNER, markdown, write_outputs

    if args.dry_run:
        plan = dry_run(ds, tasks, args.method, rlm, args.concurrency)
        print(format_plan(plan).replace("rlm-ray batch plan", "rlm-ray bench paper plan"))
        if simulated:
            print(f"({SIMULATOR_BANNER})")
        return 0
    log = (lambda line: print(line, file=sys.stderr, flush=True))
    log(f"{ds.title}: {len(tasks)} question(s), method {args.method}, model {rlm['model']}")
    summary, rows = run_method(ds, tasks, args.method, out, rlm, args.concurrency,
                               args.judge_model, log)
    title = f"{ds.title}: {args.method} with {rlm['model']}, seed {args.seed}"
    if simulated:
        title += " (SIMULATOR)"
    text = markdown(summary, title, simulated)
    write_outputs(out, summary, rows, text, simulated)
    print(text)
    print(f"table: {out / 'table.md'}  parquet: {out / 'table.parquet'}, "
          f"{out / 'per_query.parquet'}  runs: {out / 'runs'}")
    return 0
