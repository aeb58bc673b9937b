"""Ingest scaling figures for `rlm-ray bench corpus`: wall and peak PSS of
ingesting the codebase N times (N copies under distinct prefixes) with 1
worker and with several workers OF THE SAME BACKEND (local worker processes,
or Ray tasks when a cluster is running), so the speed-up compares like with
like (an in-process baseline would also pay spawn and IPC costs the workers
do not, or the reverse); and the codebase once with several workers, for
how memory grows with corpus size. Peak PSS (rlm_ray.bench.memory) is the
sum over this process and every descendant (worker processes, and Ray's
daemons and workers when this process started them), sampled while the
ingest runs. Prints figures (each run as it ends, so a long run keeps what
it measured); asserts nothing."""
from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass

from rlm_ray.bench.memory import tree_pss
from rlm_ray.corpus.ingestion import ingest

STDLIB_EXCLUDE = ["site-packages/", "__pycache__/", "*.pyc"]
SAMPLE_S = 0.2


class PeakPss:
    """Samples the PSS of this process plus all its descendants in a thread."""

    def __init__(self) -> None:
        self.tree_mb = 0.0
        self.driver_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        tree = tree_pss([os.getpid()])
        self.tree_mb = max(self.tree_mb, tree.total_mb)
        self.driver_mb = max(self.driver_mb, tree.roots_mb)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


@dataclass
class ScaleRun:
    label: str
    workers: int
    backend: str
    wall: float
    tokens: int
    documents: int
    peak_tree_mb: float
    peak_driver_mb: float


def scale_backend() -> str:
    """Ray tasks when a cluster is running or named, else local worker processes."""
    import sys

    ray = sys.modules.get("ray")
    return "ray" if os.environ.get("RAY_ADDRESS") or (ray and ray.is_initialized()) else "processes"


def _one(label: str, sources: list[str], out: str, workers: int, backend: str) -> ScaleRun:
    shutil.rmtree(out, ignore_errors=True)    # a full ingest, not an incremental no-op
    with PeakPss() as peak:
        started = time.perf_counter()
        manifest = ingest(sources, out, exclude=STDLIB_EXCLUDE, name=label, parallelism=workers,
                          backend=backend)
        wall = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    return ScaleRun(label, workers, manifest["ingest"]["parallelism"], wall, manifest["tokens"],
                    manifest["documents"], peak.tree_mb, peak.driver_mb)


def run_scale(console, stdlib: str, work: str, copies: int, workers: int) -> list[ScaleRun]:
    runs: list[ScaleRun] = []
    loads = [os.getloadavg()]
    backend = scale_backend()
    plan = [(f"{copies}x", copies, 1), ("1x", 1, workers), (f"{copies}x", copies, workers)]
    for label, n, w in plan:
        console.print(f"ingest scaling: {label} {stdlib} with {w} worker(s) ({backend}) ...")
        run = _one(label, [stdlib] * n, os.path.join(work, "scale"), w, backend)
        runs.append(run)
        loads.append(os.getloadavg())
        console.print(f"  {run.label} {run.backend}: {run.documents:,} documents, {run.tokens:,} tokens, "
                      f"wall {run.wall:.1f} s, peak PSS tree {run.peak_tree_mb:,.0f} MB "
                      f"(driver {run.peak_driver_mb:,.0f} MB); load {'/'.join(f'{x:.1f}' for x in loads[-1])}")
    _table(console, runs)
    one, small, big = runs
    console.print(f"{copies}x speed-up with {workers} workers vs 1 ({backend} both): "
                  f"{one.wall / big.wall:.2f}x; peak PSS {copies}x - 1x (both {workers} workers): "
                  f"{big.peak_tree_mb - small.peak_tree_mb:+,.0f} MB")
    console.print("load average (1/5/15 min) before the first run and after each: "
                  + "; ".join("/".join(f"{x:.1f}" for x in load) for load in loads))
    return runs


def _table(console, runs: list[ScaleRun]) -> None:
    from rich.table import Table

    table = Table(title=f"ingest scaling ({os.cpu_count()} CPUs)")
    for column in ("corpus", "workers", "documents", "tokens", "wall", "M tok/s",
                   "peak PSS (tree)", "peak PSS (driver)"):
        table.add_column(column, justify="left" if column == "corpus" else "right")
    for run in runs:
        table.add_row(run.label, run.backend, f"{run.documents:,}", f"{run.tokens:,}",
                      f"{run.wall:.1f} s", f"{run.tokens / run.wall / 1e6:.2f}",
                      f"{run.peak_tree_mb:,.0f} MB", f"{run.peak_driver_mb:,.0f} MB")
    console.print(table)
