"""`rlm-ray` entry point.

Each area of the package owns its commands in a `commands.py` that exposes
`register(commands, bench)`; this file only wires them up, so adding a
command never means editing a growing if/elif here. Handlers import their
heavy dependencies (Ray, litellm, DuckDB) lazily to keep `--help` instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

import rlm_ray  # noqa: F401  (process defaults before anything heavy loads)
from rlm_ray.errors import exit_code

COMMAND_MODULES = (
    "rlm_ray.corpus.commands",
    "rlm_ray.sim.commands",
    "rlm_ray.engine.commands",
    "rlm_ray.batch.commands",
    "rlm_ray.bench.commands",
    "rlm_ray.bench.cost",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlm-ray",
        description="Recursive Language Models over massive corpora, on Ray.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench_parser = commands.add_parser("bench", help="benchmark suites")
    bench = bench_parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency, not an absent area
                raise
            continue
        module.register(commands, bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_code(lambda: args.func(args), prog="rlm-ray")


if __name__ == "__main__":
    sys.exit(main())
