"""`rlm-ray bench grid`: what a question grid costs the driver before any
question runs, and how fast a grid's rows are written once they do.

Planning is everything `rlm-ray run --for-each ... --dry-run` does: read the
corpus's document index, expand templates x matching folders into cells with
their ids, check them against the answers already in the results folder
(resume), and estimate the cost. It is measured in a fresh process (spawned),
so its peak RSS is the planning's own plus the interpreter and imports, not
whatever this process did before. The large grid's corpus index is
synthetic (folders of documents with sizes and hashes, no text: planning
never reads text) and half its cells are already answered, so the resume
check works against a real answers table.

The small grid then runs end to end on the provider SIMULATOR over a real
ingested corpus (one folder per scope), and reports rows/s written: answers
committed over the run's wall time.
"""
from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path

from rlm_ray.errors import UserError

TEMPLATES = (
    ("exceptions", "Does the package {scope_name} ({scope}) define a public class deriving "
                   "from Exception? How many?"),
    ("licence", "Which licence does the code under {scope} declare, if any?"),
    ("entry", "What is the main public function of {scope_name}?"),
    ("vendored", "Does {scope} vendor third-party code?"),
)


def register(commands, bench) -> None:
    grid = bench.add_parser("grid", help="question-grid planning time and peak memory, and "
                                         "rows/s written on the SIMULATOR")
    grid.add_argument("--templates", type=int, default=4, choices=range(1, len(TEMPLATES) + 1),
                      help="question templates per folder")
    grid.add_argument("--plan-cells", type=int, default=100_000,
                      help="cells of the planning-only grid (synthetic index)")
    grid.add_argument("--docs-per-folder", type=int, default=4,
                      help="documents per folder of the synthetic index")
    grid.add_argument("--run-cells", type=int, default=1000,
                      help="cells of the grid run on the SIMULATOR (0: planning only)")
    grid.add_argument("--concurrency", type=int, default=32, help="questions in flight")
    grid.add_argument("--latency-ms", type=float, default=200.0,
                      help="simulated latency per model call")
    grid.add_argument("--workdir", default=".bench/grid", help="where corpora and results go")
    grid.set_defaults(func=grid_command)


def _templates_file(path: Path, count: int) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"query_id": qid, "question": q}) + "\n"
                            for qid, q in TEMPLATES[:count]))
    return path


def synthetic_index(path: Path, folders: int, docs_per_folder: int) -> None:
    """A corpus document index (path, n_tokens, sha256) of `folders` folders."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = folders * docs_per_folder
    paths = [f"repos/r{i // docs_per_folder:06d}/src/m{i % docs_per_folder}.py" for i in range(n)]
    tokens = pa.array([500 + i % 997 for i in range(n)], pa.int64())
    table = pa.table({"path": paths, "n_tokens": tokens,
                      "sha256": [hashlib.sha256(p.encode()).hexdigest() for p in paths]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def half_answered(out: Path, query_ids: list[str]) -> None:
    """One answers part holding every other cell as finished (`ok`)."""
    import pyarrow as pa

    from rlm_ray.batch.tables import ANSWERS, _parquet_bytes
    from rlm_ray.storage import write_bytes_atomic

    ids = query_ids[::2]
    columns = {f.name: pa.nulls(len(ids), f.type) for f in ANSWERS}
    columns.update(query_id=pa.array(ids), status=pa.array(["ok"] * len(ids)),
                   finished_at=pa.array([time.time_ns() // 1000] * len(ids), ANSWERS.field(
                       "finished_at").type))
    table = pa.table(columns, schema=ANSWERS)
    write_bytes_atomic(str(out / "answers" / "part-00000000T000000-bench.parquet"),
                       _parquet_bytes(table))


def _plan(docs_uri: str, templates_path: str, pattern: str, out_uri: str, queue) -> None:
    """In a fresh process: plan the grid as a dry run does, report time and peak memory."""
    import pyarrow as pa

    from rlm_ray.batch.grid import build_grid, dry_run_plan
    from rlm_ray.batch.plan import estimate
    from rlm_ray.batch.queries import load_queries
    from rlm_ray.batch.tables import latest_statuses
    from rlm_ray.corpus.scopes import read_doc_index

    rlm = {"model": "openai/sim/rlm-policy"}
    # The price table (litellm's) is loaded once per driver whatever it plans: not timed.
    estimate(range(0), rlm, calls_per_question=10, total=0, concurrency=1)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    templates = load_queries(templates_path).queries
    grid = build_grid(read_doc_index(docs_uri), templates, pattern)
    answers = latest_statuses(out_uri)
    plan, todo = dry_run_plan(grid, answers, rlm,
                              retry_failed=False, calls_per_question=10, concurrency=32)
    queue.put({"seconds": time.perf_counter() - started, "cells": grid.size, "todo": todo,
               "scopes": grid.scopes.num_rows,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "rss_before_mb": rss_before,
               "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20})


def measure_planning(docs_uri: str, templates_path: str, pattern: str, out_uri: str) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_plan, args=(docs_uri, templates_path, pattern, out_uri, queue))
    proc.start()
    try:
        result = queue.get(timeout=600)
    finally:
        proc.join(timeout=60)
    return result


def _plan_figures(label: str, figures: dict) -> list[tuple[str, str]]:
    return [(f"{label}: cells (scopes x templates)",
             f"{figures['cells']:,} ({figures['scopes']:,} x "
             f"{figures['cells'] // figures['scopes']})"),
            (f"{label}: cells to run after resume check", f"{figures['todo']:,}"),
            (f"{label}: planning time", f"{figures['seconds']:.2f} s"),
            (f"{label}: driver peak RSS", f"{figures['peak_rss_mb']:.0f} MB (before planning, "
                                          f"after imports: {figures['rss_before_mb']:.0f} MB)"),
            (f"{label}: Arrow peak allocation", f"{figures['arrow_peak_mb']:.0f} MB")]


def _real_corpus(root: Path, folders: int) -> Path:
    """`folders` small packages, one module each, ingested once (incremental after)."""
    from rlm_ray.corpus import ingest

    src = root / "src"
    for i in range(folders):
        pkg = src / "pkgs" / f"p{i:04d}"
        pkg.mkdir(parents=True, exist_ok=True)
        module = pkg / "core.py"
        if not module.exists():
            module.write_text(f'"""Package {i}."""\n\nclass P{i}Error(Exception):\n    pass\n\n\n'
                              f"def entry_{i}(x):\n    return x * {i}\n")
    corpus = root / "corpus"
    ingest([str(src)], str(corpus))
    return corpus


def run_grid(cells: int, templates: int, concurrency: int, latency_ms: float,
             work: Path) -> list[tuple[str, str]]:
    from rlm_ray.batch.runner import run
    from rlm_ray.batch.tables import read_run
    from rlm_ray.llm.config import GatewayConfig
    from rlm_ray.sim import SimServer

    folders = max(1, cells // templates)
    corpus = _real_corpus(work / "run", folders)
    templates_path = _templates_file(work / "run" / "templates.jsonl", templates)
    out = work / "run" / f"results-{time.strftime('%Y%m%dT%H%M%S')}"
    planning = measure_planning(str(corpus / doc_index_file(str(corpus))),
                                str(templates_path), "pkgs/*/", str(out))
    with SimServer(latency_ms=latency_ms) as server:
        gateway = GatewayConfig(cache_mode="off", api_base=server.base_url)
        rlm = {"model": "openai/sim/rlm-policy", "api_base": server.base_url,
               "max_depth": 1, "max_iterations": 12, "gateway": gateway}
        started = time.monotonic()
        summary = run(str(corpus), str(templates_path), str(out), rlm=rlm,
                      concurrency=concurrency, progress=False, for_each="pkgs/*/")
        wall = time.monotonic() - started
        requests = server.stats()["requests"]
    answers = read_run(str(out), with_details=False).answers
    ok = answers.column("status").to_pylist().count("ok")
    return _plan_figures(f"{folders * templates}-cell grid", planning) + [
        ("run: rows written (ok)", f"{answers.num_rows} ({ok})"),
        ("run: wall (Ray start, hosts, every question)", f"{wall:.1f} s"),
        ("run: rows/s written", f"{answers.num_rows / wall:.2f}"),
        ("run: model calls at the simulator", f"{requests}"),
        ("run: batch summary wall", f"{summary.wall_s:.1f} s")]


def doc_index_file(corpus: str) -> str:
    from rlm_ray.corpus.layout import read_manifest

    return read_manifest(corpus)["docs_file"]


def grid_command(args: argparse.Namespace) -> int:
    for name in ("plan_cells", "docs_per_folder", "concurrency"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.run_cells < 0:
        raise UserError("--run-cells must not be negative")
    work = Path(args.workdir)
    folders = max(1, args.plan_cells // args.templates)
    big = work / f"plan-{folders}x{args.docs_per_folder}"
    docs = big / "docs.parquet"
    templates_path = _templates_file(big / "templates.jsonl", args.templates)
    out = big / "results"
    if not docs.exists():
        synthetic_index(docs, folders, args.docs_per_folder)
    if not (out / "answers").exists():
        from rlm_ray.batch.grid import build_grid
        from rlm_ray.batch.queries import load_queries
        from rlm_ray.corpus.scopes import read_doc_index

        grid = build_grid(read_doc_index(str(docs)), load_queries(str(templates_path)).queries,
                          "repos/*/")
        half_answered(out, grid.cells.column("query_id").to_pylist())
        del grid
    print(f"bench grid: planning {folders * args.templates:,} cells "
          f"({folders:,} folders x {args.templates} templates, "
          f"{folders * args.docs_per_folder:,} documents)", file=sys.stderr, flush=True)
    rows = _plan_figures(f"{folders * args.templates:,}-cell grid",
                         measure_planning(str(docs), str(templates_path), "repos/*/", str(out)))
    if args.run_cells:
        print(f"bench grid: running {args.run_cells} cells on the provider SIMULATOR",
              file=sys.stderr, flush=True)
        rows += run_grid(args.run_cells, args.templates, args.concurrency, args.latency_ms, work)
    width = max(len(k) for k, _ in rows)
    print("rlm-ray bench grid (planning: a dry run's work; run: provider SIMULATOR)")
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")
    print(f"  {'cpus / load average'.ljust(width)}  {os.cpu_count()} / "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    return 0
