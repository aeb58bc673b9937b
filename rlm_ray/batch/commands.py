"""CLI: `rlm-ray run` (a batch) and `rlm-ray show` (its results)."""
from __future__ import annotations

import argparse
import sys

from rlm_ray.errors import UserError
from rlm_ray.llm.options import add_cost_arguments, cost_fields
from rlm_ray.text_context import DEFAULT_MAX_CONTEXT_BYTES, MIB


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="litellm model string; `sim` starts an in-process SIMULATOR")
    parser.add_argument("--sub-model", default=None, help="model for llm_query sub-calls")
    parser.add_argument("--api-base", default=None, help="provider base URL")
    parser.add_argument("--max-depth", type=int, default=1, help="rlm_query recursion depth")
    parser.add_argument("--max-iterations", type=int, default=20, help="root turns per question")
    parser.add_argument("--timeout-s", type=float, default=None, help="wall limit per question")
    parser.add_argument("--question-budget-usd", type=float, default=None,
                        help="dollar limit per question")
    parser.add_argument("--rpm", type=float, default=None, help="provider requests/minute")
    parser.add_argument("--tpm", type=float, default=None, help="provider tokens/minute")
    parser.add_argument("--cache", default=None,
                        help="response cache URI (default RESULTS/cache; 'off' disables)")
    add_cost_arguments(parser)
    from rlm_ray.engine.commands import add_dialect_args, add_window_args

    add_dialect_args(parser)   # --system-prompt FILE, --allow-model M
    add_window_args(parser)    # --root-window TOKENS


def register(commands, bench) -> None:
    run = commands.add_parser(
        "run", help="answer a file of questions over a corpus (resumable batch)",
        description="Answer every question of FILE over CORPUS with a pool of RLM actors. "
                    "A row with a `context` (text) or `context_file` (path or s3:// URI) "
                    "column runs over that text instead; CORPUS may be left out when every "
                    "row has one. Rerunning the same command resumes: finished query ids "
                    "are skipped and cached model calls are not paid twice.")
    run.add_argument("corpus", nargs="?", default=None,
                     help="corpus URI (local path or s3://) made by `rlm-ray ingest`; optional "
                          "when every row of FILE has its own context")
    run.add_argument("--queries", required=True, help=".jsonl / .csv / .parquet questions")
    run.add_argument("--out", required=True, help="results folder (local path or s3://)")
    run.add_argument("--for-each", default=None, metavar="GLOB",
                     help="a question grid: each row of FILE is a template, asked of each "
                          "folder ('repos/*/') or document ('docs/*.md') of CORPUS matching "
                          "GLOB, as row template_id@scope; {scope} / {scope_name} in a "
                          "question are filled in")
    add_model_arguments(run)
    run.add_argument("--concurrency", type=int, default=8,
                     help="questions in flight (run as loops inside a few RLM host actors)")
    run.add_argument("--lease-wait", type=float, default=0.0, metavar="SECONDS",
                     help="if another run holds the results folder, wait this long for it "
                          "(default: refuse at once, naming the holder)")
    run.add_argument("--lease-ttl", type=float, default=60.0, metavar="SECONDS",
                     help="lease expiry: a crashed driver's folder is taken over this long "
                          "after its last heartbeat")
    run.add_argument("--budget-usd", type=float, default=None,
                     help="whole-batch dollar budget: no new question starts past it")
    run.add_argument("--retry-failed", action="store_true",
                     help="rerun questions whose last status is not ok")
    run.add_argument("--max-attempts", type=int, default=3,
                     help="attempts per question when its actor dies or the call breaks")
    run.add_argument("--dry-run", action="store_true",
                     help="print the plan and a cost estimate; call no model")
    run.add_argument("--calls-per-question", type=int, default=10,
                     help="model calls per question assumed by --dry-run")
    run.add_argument("--max-context-mib", type=float, default=DEFAULT_MAX_CONTEXT_BYTES / MIB,
                     metavar="MIB", help="largest per-row text context (bigger ones end that "
                                         "row as an error; default %(default)g)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar/lines")
    run.set_defaults(func=run_command)

    show = commands.add_parser("show", help="summarise a batch's results; --html for a page")
    show.add_argument("results", help="results folder (local path or s3://)")
    show.add_argument("--query-id", default=None, help="one question's call tree and steps")
    show.add_argument("--html", default=None, help="write a self-contained HTML page here")
    show.set_defaults(func=show_command)


def _check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")


def rlm_settings(args: argparse.Namespace, out_uri: str) -> tuple[dict, object | None]:
    """The RLM settings of a batch and the in-process simulator to stop, if any."""
    from rlm_ray import storage
    from rlm_ray.llm.config import GatewayConfig
    from rlm_ray.sim import resolve_model
    from rlm_ray.sim.server import served_windows

    _check_positive(args, "max_iterations", "timeout_s", "question_budget_usd", "rpm", "tpm")
    from rlm_ray.engine.commands import read_output_schema

    output_schema = read_output_schema(args.output_schema)   # before any simulator starts
    if args.max_depth < 0:
        raise UserError("--max-depth must be >= 0")
    from rlm_ray.engine.commands import check_root_window

    check_root_window(getattr(args, "root_window", None))
    from rlm_ray.llm.options import entry_for

    model, api_base, server = resolve_model(args.model, args.api_base,
                                            entry_for(args.price_like, args.model))
    sub_model = args.sub_model
    if sub_model:
        sub_model, _, _ = resolve_model(sub_model, api_base or "unused")
    if server is not None:
        print(f"rlm-ray: using the provider SIMULATOR at {server.base_url} "
              "(not a real model)", file=sys.stderr)
    cache = None if args.cache == "off" else (args.cache or storage.join(out_uri, "cache"))
    gateway = GatewayConfig(rpm=args.rpm, tpm=args.tpm, cache_uri=cache, api_base=api_base,
                            cache_mode="off" if cache is None else "auto",
                            context_windows=served_windows(server, model),
                            **cost_fields(args, model))
    from rlm_ray.engine.commands import allowed_models, read_system_prompt, window_note

    root_window = getattr(args, "root_window", None)
    # Said after the run (run_command), so that bad input stays a one-line error.
    args.window_note = window_note(model, root_window, gateway)

    rlm = {"model": model, "sub_model": sub_model, "api_base": api_base,
           "max_depth": args.max_depth, "max_iterations": args.max_iterations,
           "timeout_s": args.timeout_s, "budget_usd": args.question_budget_usd,
           "gateway": gateway, "system_prompt": read_system_prompt(args.system_prompt),
           "allowed_models": allowed_models(args.allow_model, api_base),
           "output_schema": output_schema,
           **({"root_window": root_window} if root_window is not None else {})}
    return rlm, server


def run_command(args: argparse.Namespace) -> int:
    from rlm_ray.batch.plan import format_plan
    from rlm_ray.batch.progress import print_summary
    from rlm_ray.batch.runner import run

    _check_positive(args, "concurrency", "budget_usd", "max_attempts", "calls_per_question",
                    "lease_ttl", "max_context_mib")
    rlm, server = rlm_settings(args, args.out)
    try:
        summary = run(args.corpus, args.queries, args.out, rlm=rlm,
                      concurrency=args.concurrency, retry_failed=args.retry_failed,
                      dry_run=args.dry_run, progress=not args.no_progress,
                      budget_usd=args.budget_usd, max_attempts=args.max_attempts,
                      calls_per_question=args.calls_per_question,
                      lease_wait_s=args.lease_wait, lease_ttl_s=args.lease_ttl,
                      max_context_bytes=int(args.max_context_mib * MIB),
                      for_each=args.for_each)
    finally:
        if server is not None:
            server.stop()
    if getattr(args, "window_note", None):
        print(args.window_note, file=sys.stderr)
    if summary.plan is not None:
        print(format_plan(summary.plan))
        return 0
    print_summary(summary)
    if summary.budget_stopped:
        print("rlm-ray: batch budget reached; rerun with a larger --budget-usd to continue",
              file=sys.stderr)
    return 0


def show_command(args: argparse.Namespace) -> int:
    from rlm_ray.batch.show import show

    return show(args.results, query_id=args.query_id, html_path=args.html)

