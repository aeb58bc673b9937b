"""Shared body of the `jobs/` entrypoints: parse arguments, ingest the
sources incrementally, run the batch, print the summary. Made for
`ray job submit`: no TTY there, so progress comes as plain periodic lines
that `ray job logs` shows."""
from __future__ import annotations

import argparse
from collections.abc import Callable

from rlm_ray.errors import exit_code


def _guarded(body: Callable[[], int]) -> int:
    return exit_code(body, prog="rlm-ray job",
                     interrupted="interrupted; rerun the same command to resume")


def ingest_then_run(argv: list[str] | None, *, prog: str, description: str,
                    source_help: str, chunk_tokens: int) -> int:
    from rlm_ray.batch.commands import add_model_arguments

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("sources", nargs="+", help=source_help)
    parser.add_argument("--corpus", required=True, help="corpus URI to (re)ingest into")
    parser.add_argument("--queries", required=True, help=".jsonl / .csv / .parquet questions")
    parser.add_argument("--out", required=True, help="results folder (local path or s3://)")
    parser.add_argument("--exclude", action="append", default=[],
                        help="gitignore-style pattern to leave out (repeatable)")
    parser.add_argument("--chunk-tokens", type=int, default=chunk_tokens)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--budget-usd", type=float, default=None, help="whole-batch budget")
    parser.add_argument("--retry-failed", action="store_true")
    add_model_arguments(parser)
    args = parser.parse_args(argv)

    def body() -> int:
        from rlm_ray.batch.commands import rlm_settings
        from rlm_ray.batch.progress import print_summary
        from rlm_ray.batch.runner import run
        from rlm_ray.corpus import ingest

        manifest = ingest(args.sources, args.corpus, chunk_tokens=args.chunk_tokens,
                          exclude=args.exclude)
        print(f"[rlm-ray job] corpus {args.corpus}: {manifest.get('documents')} documents, "
              f"{manifest.get('tokens'):,} tokens", flush=True)
        rlm, server = rlm_settings(args, args.out)
        try:
            summary = run(args.corpus, args.queries, args.out, rlm=rlm,
                          concurrency=args.concurrency, retry_failed=args.retry_failed,
                          budget_usd=args.budget_usd, progress=True)
        finally:
            if server is not None:
                server.stop()
        print_summary(summary)
        return 0

    return _guarded(body)


def pipeline_main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="pipeline.py", description="Run a scheduled pipeline spec for one date: "
        "incremental ingest, new or changed questions, results under run_date=<date>/.")
    parser.add_argument("spec", help="pipeline spec (YAML)")
    parser.add_argument("--date", default=None, help="run date YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--progress", action="store_true", help="progress lines while running")
    args = parser.parse_args(argv)

    def body() -> int:
        from rlm_ray.batch.pipeline import load_spec, parse_date, run_pipeline
        from rlm_ray.batch.progress import print_summary

        spec = load_spec(args.spec)
        outcome = run_pipeline(spec, parse_date(args.date), progress=args.progress)
        if outcome.skipped_complete:
            print(f"[rlm-ray pipeline] {spec.name} {outcome.run_date}: already complete at "
                  f"{outcome.partition}; nothing to do")
            return 0
        print(f"[rlm-ray pipeline] {spec.name} {outcome.run_date}: {outcome.selected} of "
              f"{outcome.total_questions} questions new or changed (rerun: {spec.rerun})")
        if outcome.selected:
            print_summary(outcome.summary)
        return 0

    return _guarded(body)
