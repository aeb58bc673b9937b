"""`rlm-ray bench cost`: what prompt caching saves on the root loop.

Seeded suite cases (oolong at 1M tokens, seeds 0-2 by default: 18 questions)
are answered four times against the provider SIMULATOR, billing like an
automatic-prefix-caching model (gpt-5-mini) and like a breakpoint-caching one
(claude-sonnet-4-5), each with `--prompt-cache off` and `auto`. Each of the
four gets one fresh simulator (a cold cache) for all its cases, as one
provider serves a night's batches: the cold start is paid once, not per
case. Figures come from the batch's own `calls` table, priced by the
gateway's litellm cost calculation: root input dollars per question (the
part caching acts on), all dollars per question, the cached share of root
input tokens, and the saving against `off` and against no caching at all.

For automatic-caching styles, how much `off` already caches depends on how
the provider spreads requests without a routing key over its caches, which
the simulator models as `--cache-replicas` caches chosen at random: a knob,
not a measurement. So those styles are run once per replica count of
`--cache-replicas` (default 1,2,4,8), and the saving against `off` is a
sweep over it; the saving against no caching is the figure that does not
rest on it. Breakpoint styles have one cache per account (no routing): they
run once.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rlm_ray.errors import UserError

POLICY = "sim/rlm-policy"
STYLES = ("gpt-5-mini", "claude-sonnet-4-5")
MODES = ("off", "auto")
REPLICAS = (1, 2, 4, 8)


@dataclass
class CostRun:
    billed_like: str
    prompt_cache: str
    cache_replicas: int | None      # the simulator's keyless routing spread (automatic style)
    questions: int
    root_turns: float               # per question
    root_input_tokens: float        # per question
    cached_share: float             # of root input tokens
    root_input_usd: float | None    # per question
    uncached_usd: float | None      # per question: the same root input with no token cached
    total_usd: float | None         # per question, root + sub-calls
    wall_s: float


def register(commands, bench) -> None:
    parser = bench.add_parser(
        "cost", help="prompt caching on the root loop: $ per question, auto vs off (SIMULATOR)",
        description="Answer one seeded suite case with --prompt-cache off and auto against "
                    "the provider SIMULATOR billing like gpt-5-mini (automatic prefix caching) "
                    "and like claude-sonnet-4-5 (cache_control breakpoints); print root input "
                    "dollars per question, saved against off and against no caching. "
                    "Automatic styles run once per simulator cache count (--cache-replicas).")
    parser.add_argument("--suite", default="oolong")
    parser.add_argument("--size", default="2^20", help="corpus size in tokens (default 2^20)")
    parser.add_argument("--seeds", default="0,1,2",
                        help="comma-separated case seeds, answered in order against one simulator")
    parser.add_argument("--like", default=",".join(STYLES),
                        help="comma-separated litellm price entries to bill like")
    parser.add_argument("--cache-replicas", default=",".join(map(str, REPLICAS)),
                        help="comma-separated counts of simulator caches that keyless requests "
                             "are spread over (automatic-caching styles only; a simulator "
                             "assumption, so a sweep)")
    parser.add_argument("--concurrency", type=int, default=3, help="questions in flight")
    parser.add_argument("--workdir", default=".bench", help="cache of generated corpora")
    parser.add_argument("--out", default=".bench/results/cost", help="batch runs go here")
    parser.set_defaults(func=cost_command)


def _root_input_usd(call: dict, model: str, gateway) -> float | None:
    """The input part of a root call's bill, by the same litellm calculation."""
    from rlm_ray.llm.cost import billed_cost
    from rlm_ray.llm.usage import CallUsage

    usage = CallUsage(call["prompt_tokens"] or 0, 0, call["cached_tokens"] or 0,
                      call["cache_write_tokens"] or 0, 0, call["service_tier"])
    return billed_cost(model, usage, gateway)


def run_one(cases: list, like: str, mode: str, out: Path, concurrency: int,
            replicas: int | None = None) -> CostRun:
    from rlm_ray.batch.runner import run
    from rlm_ray.batch.tables import read_run
    from rlm_ray.llm.config import GatewayConfig
    from rlm_ray.sim.server import SimServer

    model = f"openai/{POLICY}"
    questions = 0
    roots: list[dict] = []
    costs: list = []
    wall = 0.0
    knobs = {} if replicas is None else {"cache_replicas": replicas}
    with SimServer(bill_like={POLICY: like}, **knobs) as sim:   # fresh server: a cold cache
        gateway = GatewayConfig(api_base=sim.base_url, cache_mode="off", prompt_cache=mode,
                                price_like={model: like})
        rlm = {"model": model, "sub_model": model, "api_base": sim.base_url, "max_depth": 1,
               "max_iterations": 20, "timeout_s": None, "budget_usd": None, "gateway": gateway}
        for case in cases:
            run_dir = out / f"{like}-{mode}-r{replicas or 1}" / case.folder.name
            if run_dir.exists():
                shutil.rmtree(run_dir)   # a benchmark measures; it never resumes
            started = time.monotonic()
            run(str(case.corpus), str(case.queries), str(run_dir), rlm=rlm,
                concurrency=concurrency, progress=False)
            wall += time.monotonic() - started
            tables = read_run(str(run_dir))
            rows = tables.answers.to_pylist()
            questions += len(rows)
            roots += [c for c in tables.calls.to_pylist() if c["kind"] == "root"]
            costs += [a["cost_usd"] for a in rows]
    n = max(questions, 1)
    root_in = sum(c["prompt_tokens"] or 0 for c in roots)
    cached = sum(c["cached_tokens"] or 0 for c in roots)
    input_usd = [_root_input_usd(c, model, gateway) for c in roots]
    uncached_usd = [_root_input_usd(dict(c, cached_tokens=0, cache_write_tokens=0), model, gateway)
                    for c in roots]
    return CostRun(
        like, mode, replicas, questions, len(roots) / n, root_in / n, cached / root_in if root_in else 0.0,
        None if any(x is None for x in input_usd) else sum(input_usd) / n,
        None if any(x is None for x in uncached_usd) else sum(uncached_usd) / n,
        None if any(x is None for x in costs) else sum(costs) / n, wall)


def _usd(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.5f}"


def _saving(usd: float | None, base: float | None) -> str:
    return f"{1 - usd / base:.1%}" if usd is not None and base else ""


def format_table(runs: list[CostRun]) -> str:
    lines = ["| billed like | sim caches | --prompt-cache | questions | root turns/q | "
             "root input tokens/q | cached share | root input $/q | all $/q | saving vs off | "
             "saving vs no caching |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    off = {(r.billed_like, r.cache_replicas): r for r in runs if r.prompt_cache == "off"}
    for r in runs:
        base = off.get((r.billed_like, r.cache_replicas))
        saving = ""
        if r.prompt_cache != "off" and base is not None:
            saving = _saving(r.root_input_usd, base.root_input_usd)
        caches = "1 (no routing)" if r.cache_replicas is None else str(r.cache_replicas)
        lines.append(f"| {r.billed_like} | {caches} | {r.prompt_cache} | {r.questions} | "
                     f"{r.root_turns:.1f} | {r.root_input_tokens:,.0f} | {r.cached_share:.1%} | "
                     f"{_usd(r.root_input_usd)} | {_usd(r.total_usd)} | {saving} | "
                     f"{_saving(r.root_input_usd, r.uncached_usd)} |")
    return "\n".join(lines)


def _replica_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--cache-replicas takes comma-separated integers, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise UserError(f"--cache-replicas needs counts >= 1, got {text!r}")
    return counts


def cost_command(args: argparse.Namespace) -> int:
    from rlm_ray.bench.commands import parse_size
    from rlm_ray.bench.quality import prepare
    from rlm_ray.bench.suites import SUITES
    from rlm_ray.sim.caching import billing_style

    if args.suite not in SUITES:
        raise UserError(f"unknown suite {args.suite!r}; choose from {', '.join(SUITES)}")
    if args.concurrency < 1:
        raise UserError("--concurrency must be at least 1")
    styles = [s.strip() for s in args.like.split(",") if s.strip()]
    if not styles:
        raise UserError("--like needs at least one litellm price entry")
    size = parse_size(args.size)
    replica_counts = _replica_counts(args.cache_replicas)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    if not seeds:
        raise UserError("--seeds needs at least one seed")
    cases = [prepare(args.suite, seed, size, Path(args.workdir), log) for seed in seeds]
    runs = []
    for like in styles:
        routed = billing_style(like) == "automatic"
        for replicas in (replica_counts if routed else [None]):
            for mode in MODES:
                caches = f", {replicas} simulator cache(s)" if routed else ""
                log(f"{args.suite} {size:,} tokens, seeds {args.seeds}, SIMULATOR billing like "
                    f"{like}{caches}, --prompt-cache {mode}")
                result = run_one(cases, like, mode, Path(args.out), args.concurrency, replicas)
                # Each run's figures as it ends: a long sweep keeps what it measured.
                log(f"  {result.questions} questions in {result.wall_s:.1f}s; cached share "
                    f"{result.cached_share:.1%}, root input $/q {_usd(result.root_input_usd)}, "
                    f"saving vs no caching {_saving(result.root_input_usd, result.uncached_usd)}")
                runs.append(result)
    print(f"## prompt caching: {args.suite} at {cases[0].meta['tokens']:,} tokens, seeds {args.seeds} "
          f"(provider SIMULATOR, litellm prices)\n")
    print(format_table(runs))
    return 0
